"""moto's S3 server on the loopback, as Ray's own tests run it, with one fault it can inject: a PUT whose key ends
with a given suffix is *held* (the request arrives, the server does not answer) until the test releases it. A
process killed while its PUT is held dies exactly mid-upload, with no race against how fast the upload is."""

from __future__ import annotations

import contextlib
import logging
import os
import threading

BUCKET = "icg-checkpoints"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_EC2_METADATA_DISABLED": "true"}  # never ask a metadata service for credentials or region
UNSET = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


class PutHold:
    """WSGI middleware: `hold(suffix)` arms it; the next PUT of a key ending with `suffix` sets `reached` and waits
    for `release()`, then fails with 503 (its client is usually dead by then)."""

    def __init__(self, app):
        self.app, self.suffix = app, None
        self.reached, self.released = threading.Event(), threading.Event()

    def hold(self, suffix: str) -> None:
        self.suffix = suffix
        self.reached.clear()
        self.released.clear()

    def release(self) -> None:
        self.suffix = None
        self.released.set()

    def __call__(self, environ, start_response):
        if self.suffix and environ.get("REQUEST_METHOD") == "PUT" and environ.get("PATH_INFO", "").endswith(
                self.suffix):
            self.reached.set()
            self.released.wait(timeout=600)
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"held by the test, then dropped"]
        return self.app(environ, start_response)


@contextlib.contextmanager
def s3_server():
    """Yields (endpoint "127.0.0.1:PORT", boto3 client, PutHold) with one bucket, the dummy credentials in this
    process's environment (restored after) and the server stopped after."""
    import boto3
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from moto.server import ThreadedMotoServer
    from werkzeug.serving import make_server

    holder = PutHold(DomainDispatcherApplication(create_backend_app))

    class HoldingServer(ThreadedMotoServer):
        def _server_entry(self) -> None:  # moto's own entry, with the middleware around its app
            self._server = make_server(self._ip_address, self._port, holder, True,
                                       request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    saved = {name: os.environ.get(name) for name in (*CREDENTIALS, *UNSET)}
    os.environ.update(CREDENTIALS)
    for name in UNSET:
        os.environ.pop(name, None)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = HoldingServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"{host}:{port}"
        client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client, holder
    finally:
        holder.release()
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def s3_uri(endpoint: str, prefix: str, bucket: str = BUCKET, extra: str = "") -> str:
    """The form pyarrow takes for an S3-compatible endpoint."""
    return f"s3://{bucket}/{prefix}?endpoint_override={endpoint}&scheme=http{extra}"
