"""Loopback servers the tests share: a static HTTP server of a folder and a moto S3 server.

Both listen on 127.0.0.1 only, run in threads of the test process, and stop when their
fixture ends.
"""

import contextlib
import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from launching import free_port


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging each request."""

    def log_message(self, *args) -> None:
        pass


def serve(folder: Path, handler=QuietHandler) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``folder`` over HTTP on 127.0.0.1; returns the server (to shut down) and its URL."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@contextlib.contextmanager
def served(folder: Path, handler=QuietHandler) -> Iterator[str]:
    """:func:`serve` for the ``with`` block; yields the URL."""
    server, url = serve(folder, handler)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def moto_s3() -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 with bucket ``shards``; its endpoint and test keys in the
    environment for the block (as a cluster job would set them)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="shards")
        yield env
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
