"""413 at any size: an oversize body gets its 413 and reason also when the client writes the whole body before
reading (urllib, or a raw socket), because the server reads and discards the rest up to `limits.linger_max_bytes`
(lingering close). Beyond that bound the server reads nothing and closes: such a client sees the reset."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest

from tests.serve.conftest import LINGER_BYTES, SECURE_LINGER_BYTES

SIXTEEN_MIB = 16 * 2**20  # four times the default limit, and beyond what socket buffers hide


def write_then_read(url: str, size: int, written: int | None = None, pace_s: float = 0.0,
                    then_get: str | None = None) -> tuple[int, dict, dict]:
    """A raw HTTP/1.1 POST declaring `size` body bytes that sends `written` of them (default: all), 1 MiB every
    `pace_s` seconds, before reading a byte: -> (status, headers, JSON body). `then_get`: a path to GET on the same
    connection afterwards; its status goes into the headers as `then-status`."""
    parts, written = urlsplit(url), size if written is None else written
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode())
        chunk = b"A" * 2**20
        for start in range(0, written, len(chunk)):
            sock.sendall(chunk[: written - start])
            time.sleep(pace_s)
        reader = sock.makefile("rb")
        status, headers = read_head(reader)
        body = json.loads(reader.read(int(headers["content-length"])))
        if then_get is not None:
            sock.sendall(f"GET {then_get} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
            headers["then-status"] = read_head(reader)[0]
        return status, headers, body


def read_head(reader) -> tuple[int, dict]:
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline().strip()) != b"":
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    return status, headers


def test_sixteen_mib_from_urllib_gets_the_413_and_its_reason(served):
    assert SIXTEEN_MIB <= LINGER_BYTES
    request = urllib.request.Request(f"{served['url']}/v1/covers", data=b"A" * SIXTEEN_MIB,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:  # not URLError(ConnectionResetError)
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    assert json.loads(refused.value.read())["error"] == (
        f"body: {SIXTEEN_MIB} bytes exceeds the limit of {256 * 1024} bytes (limits.max_body_bytes)")


def test_a_raw_client_that_writes_everything_first_reads_the_413_and_keeps_its_connection(served):
    """Sent over ~0.8 s, the body is still arriving long after the 413 is out: the server waits for its end."""
    status, headers, body = write_then_read(f"{served['url']}/v1/covers", SIXTEEN_MIB, pace_s=0.05,
                                            then_get="/healthz")
    assert status == 413 and body["error"].startswith(f"body: {SIXTEEN_MIB} bytes exceeds the limit")
    assert headers.get("connection") != "close" and headers["then-status"] == 200  # the connection carries on


def test_beyond_the_linger_bound_the_body_is_not_read(served):
    """`/secure` lingers over at most 1 MiB: a 16 MiB body is answered at once with `Connection: close`, and a
    client that insists on writing all of it first (over ~0.8 s) is cut off; one that reads early gets the 413."""
    assert SIXTEEN_MIB > SECURE_LINGER_BYTES
    url = f"{served['secure_url']}/v1/covers"
    with pytest.raises(OSError):  # ConnectionResetError or BrokenPipeError, while still writing
        write_then_read(url, SIXTEEN_MIB, pace_s=0.05)
    status, headers, body = write_then_read(url, SIXTEEN_MIB, written=0)  # reads before writing the body
    assert status == 413 and headers["connection"] == "close" and str(SIXTEEN_MIB) in body["error"]
    # within the bound, the same app lingers: a body just over its 256 KiB limit is read to its end and refused
    status, headers, body = write_then_read(url, SECURE_LINGER_BYTES)
    assert status == 413 and "limits.max_body_bytes" in body["error"] and headers.get("connection") != "close"
