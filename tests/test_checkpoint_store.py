"""CheckpointStore: atomic writes with a manifest, verified reads, `auto` falling back past a corrupt checkpoint."""

import logging

import pytest

from icg_rl.distributed.checkpoint import CheckpointError, CheckpointStore, checkpoint_name


def test_write_read_latest_and_prune(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    for it in (2, 4, 6):
        store.write(checkpoint_name(it), {"trainer_state.json": f'{{"iteration": {it}}}'.encode(),
                                          "learner/rank0/optim.pt": bytes(range(256)) * it})
    assert store.names() == ["iter_000004", "iter_000006"] and store.latest() == "iter_000006"
    name, files = store.resume("auto")
    assert name == "iter_000006" and files["learner/rank0/optim.pt"] == bytes(range(256)) * 6
    assert not list((tmp_path / "ckpt").glob(".*.tmp"))


def test_auto_falls_back_past_a_corrupt_latest_and_says_so(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep=5)
    store.write("iter_000002", {"a.bin": b"x" * 100})
    store.write("iter_000004", {"a.bin": b"y" * 100})
    (tmp_path / "iter_000004" / "a.bin").write_bytes(b"y" * 60)  # truncated
    with pytest.raises(CheckpointError, match=r"iter_000004/a\.bin: 60 bytes, the manifest says 100 \(truncated\)"):
        store.read("iter_000004")
    with caplog.at_level(logging.WARNING):
        name, files = store.resume("auto")
    assert name == "iter_000002" and files == {"a.bin": b"x" * 100}
    assert "iter_000004 is unusable" in caplog.text and "falling back to iter_000002" in caplog.text
    (tmp_path / "iter_000002" / "a.bin").write_bytes(b"z" * 100)  # same size, other bytes
    with pytest.raises(CheckpointError, match="sha256 differs"):
        store.resume("iter_000002")  # an explicit choice does not fall back
    assert store.resume("auto") == (None, None)


def test_unfinished_checkpoint_and_unknown_name(tmp_path):
    store = CheckpointStore(tmp_path)
    (tmp_path / "iter_000001").mkdir()  # a crash before the manifest was written
    with pytest.raises(CheckpointError, match="manifest.json: missing"):
        store.read("iter_000001")
    with pytest.raises(CheckpointError, match="no checkpoint 'iter_000009'"):
        store.resume(str(tmp_path / "iter_000009"))
