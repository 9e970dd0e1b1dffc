"""A loopback HTTP server with faults, for the remote-read tests (127.0.0.1, threads).

It serves in-memory objects with HEAD and GET (``Range: bytes=N-`` and ``N-M``, honouring
``If-Range``), ETag and Last-Modified (each can be turned off), and can answer a fixed
status, trickle bytes slowly, drop the connection after some bytes and change an object
between requests. Bounded: a trickle stops after :data:`TRICKLE_LIMIT` seconds, a client
that went away ends its response, and the server stops by itself after ``lifetime``.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.server
import socket
import threading
import time

TRICKLE_LIMIT = 10.0  # seconds one trickled response may last


class FaultyServer:
    """Objects by path (``/d/dataset.json``) on ``http://127.0.0.1:PORT`` (:attr:`url`).

    Attributes set by a test (all optional):
        status: path -> HTTP status answered to every request for it.
        trickle: ``(bytes, seconds)``: each response body is sent that many bytes at a time
            with that pause between.
        drop_after: ``(bytes, times)``: the first ``times`` GETs of each path send at most
            ``bytes`` of the body, then the connection is closed.
        next_versions: path -> contents that replace the object, one after each GET of it.
        requests: ``(method, path, headers)`` of every request, in order.
    """

    def __init__(
        self,
        objects: dict[str, bytes],
        *,
        etag: bool = True,
        modified: bool = True,
        ranges: bool = True,
        lifetime: float = 60.0,
    ) -> None:
        self.objects = dict(objects)
        self.mtimes = {path: 1_700_000_000.0 for path in objects}
        self.etag, self.modified, self.ranges = etag, modified, ranges
        self.status: dict[str, int] = {}
        self.trickle: tuple[int, float] | None = None
        self.drop_after: tuple[int, int] | None = None
        self.next_versions: dict[str, list[bytes]] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self._gets: dict[str, int] = {}
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self._timer = threading.Timer(lifetime, self.close)
        self._timer.daemon = True
        self._timer.start()

    def replace(self, path: str, data: bytes, mtime_step: float = 10.0) -> None:
        """Put a new version of ``path`` (a later Last-Modified)."""
        self.objects[path] = data
        self.mtimes[path] = self.mtimes.get(path, 1_700_000_000.0) + mtime_step

    def validators(self, path: str) -> dict[str, str]:
        """The ETag and Last-Modified headers of ``path`` as served now."""
        out = {}
        if self.etag:
            out["ETag"] = f'"{hashlib.sha256(self.objects[path]).hexdigest()[:16]}"'
        if self.modified:
            out["Last-Modified"] = email.utils.formatdate(self.mtimes[path], usegmt=True)
        return out

    def gets(self, path: str) -> list[dict]:
        """The headers of every GET of ``path``."""
        return [h for method, p, h in self.requests if method == "GET" and p == path]

    def _drop_limit(self, path: str) -> int | None:
        count = self._gets.get(path, 0)
        self._gets[path] = count + 1
        if self.drop_after is not None and count < self.drop_after[1]:
            return self.drop_after[0]
        return None

    def _advance(self, path: str) -> None:
        versions = self.next_versions.get(path)
        if versions:
            self.replace(path, versions.pop(0))

    def close(self) -> None:
        """Stop serving (idempotent)."""
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultyServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self._answer()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer()

    def _answer(self) -> None:
        owner: FaultyServer = self.server.owner  # type: ignore[attr-defined]
        path = self.path
        owner.requests.append((self.command, path, dict(self.headers)))
        code = owner.status.get(path) or (None if path in owner.objects else 404)
        if code:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data, validators = owner.objects[path], owner.validators(path)
        start, end = self._range(len(data), validators)
        self.send_response(206 if (start, end) != (0, len(data)) else 200)
        if (start, end) != (0, len(data)):
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes" if owner.ranges else "none")
        for name, value in validators.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "GET":
            limit = owner._drop_limit(path)
            owner._advance(path)  # a later request sees the next version, if any
            self._send(data[start:end], limit, owner.trickle)

    def _range(self, size: int, validators: dict) -> tuple[int, int]:
        spec, condition = self.headers.get("Range"), self.headers.get("If-Range")
        owner: FaultyServer = self.server.owner  # type: ignore[attr-defined]
        if not (owner.ranges and spec and spec.startswith("bytes=")):
            return 0, size
        if condition is not None and condition not in validators.values():
            return 0, size  # changed since the client's version: the whole new object
        first, _, last = spec[len("bytes=") :].partition("-")
        return int(first), min(int(last) + 1 if last else size, size)

    def _send(self, body: bytes, limit: int | None, trickle) -> None:
        cut = body if limit is None else body[:limit]
        step, pause = trickle or (len(cut) or 1, 0.0)
        stop = time.monotonic() + TRICKLE_LIMIT
        try:
            for offset in range(0, len(cut), step):
                if time.monotonic() > stop:
                    break
                self.wfile.write(cut[offset : offset + step])
                self.wfile.flush()
                time.sleep(pause)
            if len(cut) == len(body) and time.monotonic() <= stop:
                return
            time.sleep(0.05)  # the client has the bytes before the connection drops
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:  # the client went away (its deadline passed)
            self.close_connection = True
