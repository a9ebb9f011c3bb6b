"""Typed stages: pydantic-validated boundaries, in batch runs (on every executor)."""

from __future__ import annotations

from typing import Iterator

from pydantic import BaseModel, Field

from conveyor import Item, Pipeline


class Review(BaseModel):
    text: str
    stars: int = Field(ge=1, le=5)


class Verdict(BaseModel):
    positive: bool
    words: int


def test_inputs_become_models_and_invalid_ones_fail_at_the_stage(executor, run_dir):
    pipe = Pipeline("typed")

    @pipe.stage(retries=3, retry_backoff=0)
    def judge(review: Review) -> Verdict:
        assert isinstance(review, Review)  # the stage gets the model, not a dict
        return Verdict(positive=review.stars >= 4, words=len(review.text.split()))

    @pipe.stage(after=judge)
    def downstream(v: dict) -> dict:
        return v

    inputs = [Item("good", {"text": "lovely warm soup", "stars": 5}),
              Item("too-many-stars", {"text": "x", "stars": 9}),
              Item("no-text", {"stars": 2})]
    result = pipe.run(inputs, run_dir=run_dir, executor=executor)
    assert dict(result.outputs("downstream")) == {"good": {"positive": True, "words": 3}}
    failures = {f["key"]: f for f in result.failures()}
    assert set(failures) == {"too-many-stars", "no-text"}
    assert "stage 'judge' got an invalid input" in failures["too-many-stars"]["error"]
    assert "less than or equal to 5" in failures["too-many-stars"]["error"]
    assert "text" in failures["no-text"]["error"] and "Field required" in failures["no-text"]["error"]
    assert failures["no-text"]["attempts"] == 1  # not retried: it would fail again
    assert result.counts["downstream"]["pending"] == 0  # nothing invalid went on


def test_an_output_that_does_not_fit_fails_before_it_goes_downstream(executor, run_dir):
    pipe = Pipeline("typed-out")

    @pipe.stage
    def produce(x: int) -> Verdict:
        return {"positive": "not a bool at all", "words": x}

    @pipe.stage(after=produce)
    def consume(v):
        raise AssertionError("an invalid output must not arrive here")

    result = pipe.run([Item("a", 1)], run_dir=run_dir, executor=executor)
    (failure,) = result.failures()
    assert failure["stage"] == "produce"
    assert "stage 'produce' returned an invalid output" in failure["error"]


def test_batch_and_generator_stages_validate_item_by_item(executor, run_dir):
    pipe = Pipeline("typed-batch")

    @pipe.stage(batch_size=4)
    def score(reviews: list[Review]) -> list[int]:
        return [r.stars * 10 for r in reviews]

    @pipe.stage(after=score)
    def spread(n: int) -> Iterator[int]:
        yield n
        yield n + 1

    inputs = [Item(f"r{i}", {"text": "t", "stars": s}) for i, s in enumerate([1, 2, 0, 4])]
    result = pipe.run(inputs, run_dir=run_dir, executor=executor)
    assert dict(result.outputs("score")) == {"r0": 10, "r1": 20, "r3": 40}
    assert [f["key"] for f in result.failures()] == ["r2"]  # only the invalid one
    assert sorted(v for _, v in result.outputs("spread")) == [10, 11, 20, 21, 40, 41]


def test_unvalidatable_annotations_are_left_alone(executor, run_dir):
    class Opaque:
        pass

    pipe = Pipeline("loose")

    @pipe.stage
    def anything(x: Opaque) -> Opaque:  # pydantic cannot validate Opaque: unchecked
        return x

    assert dict(pipe.run([Item("a", 3)], run_dir=run_dir, executor=executor)
                .outputs("anything")) == {"a": 3}
