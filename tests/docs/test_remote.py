"""Remote inputs: a corpus in object storage (a real S3 API server, moto's, over HTTP, read
with s3fs; an HTTP server for ``http://`` URLs), listed on the driver, one input per
object stamped by its ETag, downloaded by the ``expand`` worker."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from conveyor import Pipeline, open_run
from conveyor.docs.archives import input_items
from conveyor.docs.errors import RemoteInputError
from conveyor.docs.pipeline import add_reading_stages
from conveyor.docs.remote import download, is_remote
from conveyor.docs.search import search

from .samples import (BEES, GLACIERS, OWLS, TIDES, ended, page_text, pdf, rerun_rows,
                      zipped)


def conveyor(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "COLUMNS": "250", **env})


def inputs_summary(run_dir: Path) -> dict[str, Any]:
    with open_run(run_dir) as result:
        return json.loads(result.ledger.get_meta("inputs"))


def top_hit(run_dir: Path, query: str) -> dict[str, Any]:
    return search(run_dir, query, k=1)[0]


def test_is_remote():
    assert is_remote("s3://bucket/corpus/") and is_remote("gs://b/x.pdf")
    assert is_remote("https://example.org/a.pdf") and is_remote("simplecache::s3://b/x")
    assert not is_remote("corpus/a.pdf") and not is_remote("file:///tmp/a.pdf")
    assert not is_remote("/tmp/odd://name.pdf")


def test_a_remote_prefix_runs_and_a_rerun_takes_only_the_late_object_then_the_changed_one(
        s3, tmp_path):
    fs, bucket, env = s3["fs"], s3["bucket"], s3["env"]
    prefix = f"s3://{bucket}/corpus/"
    fs.pipe(f"{bucket}/corpus/owls.pdf", pdf(OWLS))
    fs.pipe(f"{bucket}/corpus/sub/bundle.zip", zipped({"in/tides.pdf": pdf(TIDES)}))
    fs.pipe(f"{bucket}/corpus/notes.txt", b"meeting notes")
    fs.pipe(f"{bucket}/elsewhere.pdf", pdf(GLACIERS))  # outside the prefix: not an input
    run_dir = tmp_path / "run"
    # In the driver's process (inline), to spare a busy machine the start-up of a worker
    # per stage; the test below downloads in worker processes.
    args = ("docs", prefix, "--run-dir", str(run_dir), "--gpus", "0", "-q", "--executor",
            "inline")

    first = conveyor(*args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    owls, bundle = f"{prefix}owls.pdf", f"{prefix}sub/bundle.zip"
    with open_run(run_dir) as result:
        assert sorted(dict(result.outputs("inspect"))) == [owls, f"{bundle}/in/tides.pdf"]
        assert dict(result.outputs("skipped")) == {
            f"{prefix}notes.txt": {"source": f"{prefix}notes.txt",
                                   "reason": "not a document: text"}}
        assert result.output("index")["documents"] == 2
    assert inputs_summary(run_dir)["added"] == 3
    hit = top_hit(run_dir, "birds that hunt in the dark")
    assert (hit["path"], hit["source"], hit["member"]) == (owls, owls, None)
    hit = top_hit(run_dir, "the sea level and the moon")
    assert (hit["path"], hit["source"], hit["member"]) == (
        bundle, f"{bundle}/in/tides.pdf", "in/tides.pdf")
    # The downloads live in the run directory; the text file, skipped, was not kept.
    assert sorted(p.name for p in (run_dir / "artifacts" / "expand").rglob("*")
                  if p.is_file()) == ["bundle.zip", "owls.pdf"]

    # A late object: the rerun adds it and runs nothing else again (but the index).
    before = ended(run_dir)
    bees = f"{prefix}sub/bees.pdf"
    fs.pipe(f"{bucket}/corpus/sub/bees.pdf", pdf(BEES))
    second = conveyor(*args, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    after = ended(run_dir)
    assert inputs_summary(run_dir) | {"missing_keys": [], "gone_keys": []} == {
        "added": 1, "changed": 0, "unchanged": 3, "missing": 0, "missing_keys": [], "gone": 0,
        "gone_keys": []}
    rerun = rerun_rows(before, after)
    assert {stage for stage, key in rerun if key != bees and not key.startswith(bees + "/")} \
        == {"index"}
    assert {("expand", bees), ("inspect", bees), ("extract", bees)} <= rerun
    assert top_hit(run_dir, "insects making honey")["source"] == bees

    # A changed object (a new ETag): only it starts over.
    before = after
    fs.pipe(f"{bucket}/corpus/owls.pdf", pdf(OWLS + " They swallow mice whole."))
    third = conveyor(*args, env=env)
    assert third.returncode == 0, third.stderr[-3000:]
    after = ended(run_dir)
    assert inputs_summary(run_dir)["changed"] == 1
    rerun = rerun_rows(before, after)
    assert {stage for stage, key in rerun if key != owls and not key.startswith(owls + "/")} \
        == {"index"}
    assert {("expand", owls), ("inspect", owls), ("extract", owls)} <= rerun
    with open_run(run_dir) as result:
        assert "swallow mice" in page_text(dict(result.outputs("extract"))[owls])


def reading_pipeline() -> Pipeline:
    """The reading half of the docs pipeline (no model): what an input becomes."""
    pipe = Pipeline("read")
    add_reading_stages(pipe, "1")
    return pipe


def test_an_object_gone_before_its_download_fails_alone_with_the_reason(s3, tmp_path):
    """Listed on the driver, downloaded by a worker process: one deleted in between fails
    alone, named."""
    fs, bucket = s3["fs"], s3["bucket"]
    fs.pipe(f"{bucket}/c/a.pdf", pdf(OWLS))
    fs.pipe(f"{bucket}/c/b.pdf", pdf(TIDES))
    items = list(input_items([f"s3://{bucket}/c/"]))
    fs.rm(f"{bucket}/c/b.pdf")
    with reading_pipeline().run(items, run_dir=tmp_path / "run", executor="local") as result:
        assert [(r["stage"], r["key"], r["error"]) for r in result.failures()] == [
            ("expand", f"s3://{bucket}/c/b.pdf",
             f"RemoteInputError: no such object or prefix: s3://{bucket}/c/b.pdf")]
        assert OWLS in page_text(dict(result.outputs("extract"))[f"s3://{bucket}/c/a.pdf"])


def test_urls_that_name_nothing_or_cannot_be_reached_are_usage_errors(s3, tmp_path):
    bucket, env = s3["bucket"], s3["env"]
    run_dir = tmp_path / "run"
    missing = f"s3://{bucket}/no/such/prefix/"
    nobucket = f"s3://{bucket}-gone/corpus/"
    for url in (missing, f"s3://{bucket}/nope.pdf", nobucket):
        proc = conveyor("docs", url, "--run-dir", str(run_dir), env=env)
        assert (proc.returncode, proc.stdout, proc.stderr) == (
            2, "", f"error: no such object or prefix: {url}\n"), url
    # An endpoint that refuses connections: botocore's retries off, as in test_dataset.
    with socket.socket() as sock:  # bound, then released: nothing listens there
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    proc = conveyor("docs", missing, "--run-dir", str(run_dir),
                    env={**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}",
                         "AWS_MAX_ATTEMPTS": "1"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {missing}: cannot read it: "), proc.stderr
    assert not run_dir.exists()  # nothing ran
    # An empty bucket is found out as it is listed, lazily, as the run starts: nothing is
    # recorded.
    s3["fs"].mkdir(f"{bucket}-empty")
    empty = conveyor("docs", f"s3://{bucket}-empty/", "--run-dir", str(run_dir), "-q", env=env)
    assert empty.returncode == 2
    assert empty.stderr.endswith(f"error: no objects under s3://{bucket}-empty/\n")
    with open_run(run_dir) as result:
        assert list(result.ledger.rows()) == []


def test_an_object_over_the_size_limit_is_refused_and_leaves_nothing(s3, tmp_path):
    fs, bucket = s3["fs"], s3["bucket"]
    fs.pipe(f"{bucket}/big.pdf", pdf(OWLS) + b"\0" * 5000)
    url = f"s3://{bucket}/big.pdf"
    with pytest.raises(RemoteInputError) as caught:
        download(url, tmp_path / "out", max_bytes=1000)
    assert str(caught.value) == (f"{url}: the object is over the size limit for one file "
                                 f"(1000 B)")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    path, stamp = download(url, tmp_path / "out", max_bytes=10_000)
    assert path.read_bytes() == fs.cat(f"{bucket}/big.pdf") and stamp.startswith("etag:")
    assert list((tmp_path / "out").iterdir()) == [path]  # nothing aside is left


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves FILES with an ETag and no Content-Length (HTTP/1.0, closed to end the body),
    so a download cannot know the size until it has counted it."""

    protocol_version = "HTTP/1.0"
    files: dict[str, bytes] = {}

    def do_HEAD(self) -> None:
        self._head()

    def do_GET(self) -> None:
        if self._head():
            self.wfile.write(self.files[self.path])

    def _head(self) -> bool:
        found = self.path in self.files
        self.send_response(200 if found else 404)
        if found:
            self.send_header("ETag", f'"{len(self.files[self.path])}"')
        self.end_headers()
        return found

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_files() -> Iterator[tuple[str, dict[str, bytes]]]:
    pytest.importorskip("aiohttp")  # fsspec's http filesystem
    files: dict[str, bytes] = {}
    handler = type("Handler", (_Files,), {"files": files})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", files
    finally:
        server.shutdown()
        server.server_close()


def test_an_http_url_is_an_input_and_a_body_over_the_limit_is_cut_off_as_it_streams(
        http_files, tmp_path):
    base, files = http_files
    files["/docs/owls.pdf"] = pdf(OWLS)
    url = f"{base}/docs/owls.pdf"
    [item] = input_items([url])
    assert item.key == url and item.value == {"path": url,
                                              "stamp": f"etag:{len(files['/docs/owls.pdf'])}"}
    with pytest.raises(RemoteInputError, match="over the size limit for one file"):
        download(url, tmp_path / "cut", max_bytes=100)
    assert list((tmp_path / "cut").iterdir()) == []  # the partial file is gone
    with reading_pipeline().run([item], run_dir=tmp_path / "run", executor="inline") as result:
        assert result.ok
        assert OWLS in page_text(dict(result.outputs("extract"))[url])
