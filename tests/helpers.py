"""Helpers for tests; importable from worker processes too (they get the driver's sys.path)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path


def read_log(path: Path) -> list[str]:
    """Lines a stage appended to an execution log (one line per call)."""
    if not path.exists():
        return []
    return path.read_text().splitlines()


def append_log(path: str | os.PathLike[str], line: str) -> None:
    """Append one line atomically (O_APPEND), safe from several worker processes."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class TcpProxy:
    """Forwards connections on a local port to ``target``; :meth:`cut` drops them all and
    refuses new ones (a store that went away mid-transfer), :meth:`restore` lets them in.

    ``cut_at=(b"PUT ", 2)`` cuts by itself when the second request starting with
    ``PUT`` arrives, before forwarding it: a failure at a known point of a transfer.
    """

    def __init__(self, target: tuple[str, int], cut_at: tuple[bytes, int] | None = None) -> None:
        self.target = target
        self.cut_at = cut_at
        self.requests = 0  # those that started with cut_at's prefix
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._open: list = []
        self._cut = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                if self._cut:
                    _drop(client)
                    continue
                upstream = socket.create_connection(self.target)
                self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        try:
            while data := src.recv(65536):
                if outbound and self._trips(data):
                    self.cut()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:  # shut down, not only closed: a close does not wake the other pump's recv,
            for s in (src, dst):  # and the peer would never see its connection end
                _drop(s)

    def _trips(self, data: bytes) -> bool:
        if self.cut_at is None or not data.startswith(self.cut_at[0]):
            return False
        with self._lock:
            self.requests += 1
            return self.requests >= self.cut_at[1]

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for s in self._open:
                _drop(s)
            self._open = []

    def restore(self) -> None:
        with self._lock:
            self._cut, self.cut_at = False, None

    def close(self) -> None:
        self.cut()
        self._server.close()


def _drop(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
