"""CUDA checks (marker `gpu`; skipped where torch sees no GPU — benchmarks/gpu_check.sh runs them on a lent card).

They use the CoverWorld base and MLLM folders (`ICG_GPU_MODELS`, default artifacts/coverworld/models) through the
same loading path as real checkpoints, on the GPU under bf16 autocast with fp32 master weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.gpu
MODELS = Path(os.environ.get("ICG_GPU_MODELS", ROOT / "artifacts" / "coverworld" / "models"))


@pytest.fixture(scope="module")
def pipe():
    from icg_rl.models.pipeline import ICGPipeline

    assert (MODELS / "sd").is_dir(), f"{MODELS}/sd missing: build the world or set ICG_GPU_MODELS"
    features = {f"i{i:05d}": torch.randn(64, generator=torch.Generator().manual_seed(i)) for i in range(8)}
    pipe = ICGPipeline.from_pretrained(MODELS / "sd", mllm_path=MODELS / "mllm", user_ids=["u1", "u2"],
                                       item_features=features).to("cuda")
    with torch.no_grad():
        pipe.icg.adapter.projection.gate.fill_(1.0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def batch(n: int) -> dict:
    return {"title": np.array([f"The Harbour {i}" for i in range(n)]),
            "reference_image": np.full((n, 32, 32, 3), 120, np.uint8), "has_reference": np.ones(n, bool),
            "user_id": np.array(["u1", "u2"] * (n // 2)), "history": np.array([["i00001", "i00002"]] * n),
            "group_key": np.array([str(i) for i in range(n)])}


def rollout(pipe, n: int = 4):
    from icg_rl.rl.sampling import sample_trajectory

    generators = [torch.Generator().manual_seed(i) for i in range(n)]  # CPU generators, as rl/seeding.py makes
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return sample_trajectory(pipe, batch(n), 6, 1.0, 1.0, generators)


def test_rollout_on_cuda_records_finite_log_probs_and_reproduces(pipe):
    trajectory, images = rollout(pipe)
    assert images.is_cuda and trajectory.latents.is_cuda
    assert trajectory.images.dtype == np.uint8 and trajectory.images.shape[0] == 4
    assert torch.isfinite(trajectory.log_probs).all() and trajectory.log_probs.shape == (4, 6)
    again, _ = rollout(pipe)
    difference = np.abs(trajectory.images.astype(int) - again.images.astype(int))
    assert difference.max() <= 2  # same seeds: same covers (bf16 kernels may differ in the last bit)
    assert np.abs(trajectory.images[0].astype(int) - trajectory.images[1].astype(int)).mean() > 1  # per-row noise


def test_ddpo_gradients_on_cuda(pipe):
    from icg_rl.config import AlgoConfig
    from icg_rl.rl.ddpo import ddpo_gradients

    trajectory, _ = rollout(pipe)
    algo = AlgoConfig(name="ddpo", num_inference_steps=6, eta=1.0, guidance_scale=1.0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        grads, stats = ddpo_gradients(pipe, trajectory, torch.randn(4, device="cuda"), algo,
                                      torch.Generator().manual_seed(0))
    used = [g for g in grads if g is not None]
    assert used and all(torch.isfinite(g).all() for g in used) and any(g.abs().sum() > 0 for g in used)
    assert np.isfinite(stats["loss/policy"])


def test_weight_sync_roundtrip_is_bitwise_on_cuda(pipe):
    from icg_rl.models.trainable import load_trainable_arrays, trainable_arrays

    before = {k: v.copy() for k, v in trainable_arrays(pipe).items()}
    load_trainable_arrays(pipe, before)
    after = trainable_arrays(pipe)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert all(p.is_cuda for p in pipe.trainable_parameters())


def _ipc_receiver(handle, version, queue):
    """Another process on the same GPU (as a rollout actor sharing the learner's card): open the learner's buffer
    once, copy from it as a weight-sync receiver, send back what it holds."""
    import torch

    from icg_rl.distributed.weight_sync import WeightGroupMember
    from icg_rl.distributed.weights import VersionedWeights

    params = {"a": torch.nn.Parameter(torch.zeros(1000, device="cuda")),
              "b": torch.nn.Parameter(torch.zeros(3, 7, device="cuda"))}
    member = WeightGroupMember()
    member.pipe = type("Holder", (), {"device": torch.device("cuda"), "trainable_named_parameters": lambda s: params})()
    member.weights = VersionedWeights()
    member.join_weight_group("cuda_ipc", "", 0, 1, 2)
    member.open_ipc(handle)
    member.receive_weights(version)
    queue.put({k: p.detach().cpu().numpy() for k, p in params.items()})


def test_cuda_ipc_weight_sync_between_processes_on_one_gpu():
    import torch.multiprocessing as mp

    from icg_rl.distributed.weight_sync import WeightGroupMember

    params = {"a": torch.nn.Parameter(torch.randn(1000, device="cuda")),
              "b": torch.nn.Parameter(torch.randn(3, 7, device="cuda"))}
    source = WeightGroupMember()
    source.pipe = type("Holder", (), {"device": torch.device("cuda"), "trainable_named_parameters": lambda s: params})()
    source.join_weight_group("cuda_ipc", "", 0, 0, 2)
    assert source.send_weights() == (1000 + 21) * 4  # packed and synchronized before the receiver copies
    context = mp.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_ipc_receiver, args=(source.ipc_handle(), 1, queue))
    child.start()
    got = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    for name, param in params.items():
        assert np.array_equal(got[name], param.detach().cpu().numpy())  # bit for bit
