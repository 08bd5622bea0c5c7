"""CheckpointStore on an S3 API (moto's server on the loopback): no directory rename there, so the manifest is
written last and defines "intact"; an interrupted upload is never resumed from; bad URIs name train.storage_path."""

from __future__ import annotations

import logging
import uuid

import pytest

from icg_rl.config import ConfigError
from icg_rl.distributed.checkpoint import CheckpointError, CheckpointStore, checkpoint_name
from tests.s3_server import BUCKET, s3_server, s3_uri

pytest.importorskip("moto.server", reason="moto[server] is in the dev extra: pip install -e '.[dev]'")
BIG = bytes(range(256)) * (12 * 4096 + 7)  # ~12.6 MB: past pyarrow's 10 MB part size, so a multipart upload


class Crash(Exception):
    """The process dying mid-upload, injected."""


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 (a free port), one bucket, dummy credentials; yields (endpoint, boto3 client)."""
    with s3_server() as (endpoint, client, _):
        yield endpoint, client


def uri(s3, prefix: str | None = None, bucket: str = BUCKET, extra: str = "") -> str:
    """The form pyarrow takes for an S3-compatible endpoint; a fresh prefix per call keeps tests apart."""
    return s3_uri(s3[0], prefix or uuid.uuid4().hex, bucket, extra)


def keys(s3, prefix: str) -> list[str]:
    listed = s3[1].list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
    return sorted(o["Key"] for o in listed.get("Contents", []) if not o["Key"].endswith("/"))  # not pyarrow's markers


def crash_before_manifest(store: CheckpointStore, monkeypatch) -> list[str]:
    """Make the store's next upload die right before manifest.json; returns the paths it wrote, in order."""
    written, write = [], store._write_bytes

    def dying(path: str, payload: bytes) -> None:
        if path.endswith("/manifest.json"):
            raise Crash(path)
        write(path, payload)
        written.append(path)

    monkeypatch.setattr(store, "_write_bytes", dying)
    return written


def test_write_resume_prune_and_latest(s3):
    prefix = "run-" + uuid.uuid4().hex
    store = CheckpointStore(uri(s3, prefix), keep=2)
    wrote = {}
    for it in (2, 4, 6):
        wrote[it] = {"trainer_state.json": f'{{"iteration": {it}}}'.encode(), "icg/icg.safetensors": BIG[it:],
                     "learner/rank0/optim.pt": bytes([it]) * 1000}
        where = store.write(checkpoint_name(it), wrote[it])
    assert where == f"s3://{BUCKET}/{prefix}/iter_000006?endpoint_override={s3[0]}&scheme=http"
    assert store.names() == ["iter_000004", "iter_000006"] and store.latest() == "iter_000006"
    assert s3[1].get_object(Bucket=BUCKET, Key=f"{prefix}/latest")["Body"].read() == b"iter_000006"
    objects = keys(s3, prefix)
    assert not [k for k in objects if "iter_000002" in k or ".tmp" in k], objects  # pruned; nothing left over
    assert f"{prefix}/iter_000004/manifest.json" in objects and f"{prefix}/iter_000006/icg/icg.safetensors" in objects
    fresh = CheckpointStore(uri(s3, prefix))  # a restarted driver
    name, files = fresh.resume("auto")
    assert name == "iter_000006" and files == wrote[6]  # byte for byte, the 12 MB multipart file included
    assert fresh.resume(where) == ("iter_000006", wrote[6])  # the returned URI, query and all, is a --resume value
    assert fresh.resume("iter_000004") == ("iter_000004", wrote[4])


def test_manifest_is_written_last_and_an_interrupted_upload_is_never_latest(s3, monkeypatch, caplog):
    prefix = "run-" + uuid.uuid4().hex
    store = CheckpointStore(uri(s3, prefix), keep=3)
    store.write("iter_000002", {"a.bin": b"x" * 100, "b/c.bin": b"c"})
    written = crash_before_manifest(store, monkeypatch)
    with pytest.raises(Crash):
        store.write("iter_000004", {"a.bin": b"y" * 100, "b/c.bin": b"d"})
    # every data file went straight to the final prefix (no rename on S3); the manifest was to come after them
    assert written == [f"{BUCKET}/{prefix}/iter_000004/a.bin", f"{BUCKET}/{prefix}/iter_000004/b/c.bin"]
    assert f"{prefix}/iter_000004/a.bin" in keys(s3, prefix)
    assert store.latest() == "iter_000002" and "iter_000004" in store.names()  # the pointer never moved
    assert CheckpointStore(uri(s3, prefix)).resume("auto") == ("iter_000002", {"a.bin": b"x" * 100, "b/c.bin": b"c"})
    s3[1].delete_object(Bucket=BUCKET, Key=f"{prefix}/latest")  # without the pointer, the newest name is tried first
    with caplog.at_level(logging.WARNING, logger="icg_rl.distributed.checkpoint"):
        name, files = CheckpointStore(uri(s3, prefix)).resume("auto")
    assert name == "iter_000002" and files == {"a.bin": b"x" * 100, "b/c.bin": b"c"}
    assert "iter_000004 is unusable" in caplog.text and "manifest.json: missing" in caplog.text
    assert "falling back to iter_000002" in caplog.text
    with pytest.raises(CheckpointError, match="the checkpoint was not finished"):
        store.resume("iter_000004")  # named explicitly: refused, not silently replaced


def test_files_without_a_manifest_even_when_latest_points_there(s3, caplog):
    prefix = "run-" + uuid.uuid4().hex
    store = CheckpointStore(uri(s3, prefix))
    store.write("iter_000002", {"a.bin": b"x" * 100})
    for key, body in ((f"{prefix}/iter_000004/a.bin", b"y" * 100), (f"{prefix}/latest", b"iter_000004")):
        s3[1].put_object(Bucket=BUCKET, Key=key, Body=body)  # another writer's upload, cut before its manifest
    with caplog.at_level(logging.WARNING, logger="icg_rl.distributed.checkpoint"):
        assert store.resume("auto") == ("iter_000002", {"a.bin": b"x" * 100})
    assert "iter_000004 is unusable" in caplog.text and "falling back to iter_000002" in caplog.text


def test_a_truncated_or_corrupt_object_falls_back(s3, caplog):
    prefix = "run-" + uuid.uuid4().hex
    store = CheckpointStore(uri(s3, prefix), keep=5)
    store.write("iter_000002", {"a.bin": b"x" * 100})
    store.write("iter_000004", {"a.bin": b"y" * 100})
    s3[1].put_object(Bucket=BUCKET, Key=f"{prefix}/iter_000004/a.bin", Body=b"y" * 60)
    with pytest.raises(CheckpointError, match=rf"^s3://{BUCKET}/{prefix}/iter_000004/a\.bin: 60 bytes, the manifest "
                                              r"says 100 \(truncated\)"):
        store.read("iter_000004")
    with caplog.at_level(logging.WARNING, logger="icg_rl.distributed.checkpoint"):
        assert store.resume("auto") == ("iter_000002", {"a.bin": b"x" * 100})
    assert "iter_000004 is unusable" in caplog.text and "(truncated)" in caplog.text
    s3[1].put_object(Bucket=BUCKET, Key=f"{prefix}/iter_000002/a.bin", Body=b"z" * 100)  # same size, other bytes
    with pytest.raises(CheckpointError, match="sha256 differs"):
        store.resume("iter_000002")
    assert store.resume("auto") == (None, None)


def test_rewriting_after_a_crash_leaves_nothing_stale_and_keeps_the_new_one(s3, monkeypatch):
    prefix = "run-" + uuid.uuid4().hex
    store = CheckpointStore(uri(s3, prefix), keep=1)
    store.write("iter_000002", {"a.bin": b"a2"})
    crash_before_manifest(store, monkeypatch)
    with pytest.raises(Crash):
        store.write("iter_000006", {"a.bin": b"a6", "only_then.bin": b"?"})
    monkeypatch.undo()
    # resumed from iter_000002 with another checkpoint_every: the unfinished, newer-named iter_000006 must not
    # push the one just written out of keep=1
    store.write("iter_000004", {"a.bin": b"a4"})
    assert store.names() == ["iter_000004", "iter_000006"] and store.latest() == "iter_000004"
    assert store.resume("auto") == ("iter_000004", {"a.bin": b"a4"})
    store.write("iter_000006", {"a.bin": b"a6"})  # the same name again: the crashed attempt's files are gone
    assert keys(s3, prefix) == [f"{prefix}/iter_000006/a.bin", f"{prefix}/iter_000006/manifest.json",
                                f"{prefix}/latest"]
    assert store.resume("auto") == ("iter_000006", {"a.bin": b"a6"})


def test_bucket_creation_is_opt_in(s3):
    bucket = "new-" + uuid.uuid4().hex[:12]
    with pytest.raises(ConfigError, match=rf"train\.storage_path: 's3://{bucket}/run\?.*' cannot be reached or "
                                          r"created \(.*allow_bucket_creation"):
        CheckpointStore(uri(s3, "run", bucket=bucket))
    store = CheckpointStore(uri(s3, "run", bucket=bucket, extra="&allow_bucket_creation=true"))
    store.write("iter_000001", {"a.bin": b"a"})
    assert store.resume("auto") == ("iter_000001", {"a.bin": b"a"})


@pytest.mark.parametrize("value, why", [
    ("s4://bucket/run", "Unrecognized filesystem type"),
    ("s3://bucket/run?endpoint=127.0.0.1:9000", "Unexpected query parameter"),
    ("s3:///run", "Missing bucket name"),
    ("s3://", "names no bucket"),
])
def test_bad_uris_name_the_setting_the_value_and_what_is_allowed(value, why):
    with pytest.raises(ConfigError) as err:
        CheckpointStore(value)
    message = str(err.value)
    assert message.startswith(f"train.storage_path: {value!r}") and why in message
    assert "allowed: a folder" in message and "endpoint_override=HOST:PORT" in message


def test_inline_keys_are_never_shown(s3):
    bucket = "gone-" + uuid.uuid4().hex[:12]
    with pytest.raises(ConfigError) as err:
        CheckpointStore(f"s3://AKIDEXAMPLE:SeCrEt@{bucket}/run?endpoint_override={s3[0]}&scheme=http")
    assert "SeCrEt" not in str(err.value) and "AKIDEXAMPLE" not in str(err.value)
    assert f"s3://***@{bucket}/run" in str(err.value)
