"""benchmarks/checkpoint_average.py: the weight average it scores is the uniform mean of the checkpoints, through
the same loader users use, and a folder without checkpoints is refused with its path."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("checkpoint_average")


def test_average_is_the_uniform_mean_and_keeps_integer_tensors(bench):
    states = [{"w": torch.tensor([1.0, 2.0]), "ids": torch.tensor([3, 4])},
              {"w": torch.tensor([3.0, 6.0]), "ids": torch.tensor([3, 4])},
              {"w": torch.tensor([5.0, 1.0]), "ids": torch.tensor([3, 4])}]
    averaged = bench.average_states(states)
    assert torch.equal(averaged["w"], torch.tensor([3.0, 3.0])) and averaged["w"].dtype == torch.float32
    assert torch.equal(averaged["ids"], torch.tensor([3, 4]))
    assert torch.equal(bench.average_states(states[:1])["w"], states[0]["w"])  # one checkpoint: itself


def test_average_refuses_mismatched_checkpoints(bench):
    with pytest.raises(ValueError, match="keys"):
        bench.average_states([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])
    with pytest.raises(ValueError, match="'ids' differs"):
        bench.average_states([{"ids": torch.tensor([1])}, {"ids": torch.tensor([2])}])
    with pytest.raises(ValueError, match="no state dicts"):
        bench.average_states([])


def test_averaged_weights_load_through_the_pipeline_loader(bench, micro_world, micro_checkpoint, tmp_path):
    """Two checkpoints of the micro policy (the second with its gate shifted): the loaded pipeline holds their mean."""
    from types import SimpleNamespace

    from safetensors.torch import load_file, save_file

    from icg_rl.models.pipeline import pipeline_from_config

    cfg, _ = micro_world
    folder, _, _ = micro_checkpoint
    state = load_file(str(folder / "icg.safetensors"))
    gate = "icg.adapter.projection.gate"
    run = tmp_path / "run"
    for name, shift in (("iter_000001", 0.0), ("iter_000002", 0.5)):
        target = run / "checkpoints" / name / "icg"
        target.mkdir(parents=True)
        save_file(state | {gate: state[gate] + shift}, str(target / "icg.safetensors"))
        (target / "icg_config.json").write_bytes((folder / "icg_config.json").read_bytes())
    folders = bench.checkpoints(run)
    assert [f.name for f in folders] == ["iter_000001", "iter_000002"]
    holder = SimpleNamespace(pipe=pipeline_from_config(cfg, icg_path=folder))  # load_average needs only `.pipe`
    bench.load_average(holder, folders)
    assert float(holder.pipe.icg.adapter.projection.gate) == pytest.approx(float(state[gate]) + 0.25)


def test_a_folder_without_checkpoints_is_refused(bench, tmp_path):
    with pytest.raises(SystemExit, match="no .*checkpoints/iter_"):
        bench.checkpoints(tmp_path)
