"""Shared fixtures: the micro world (built once per session) and one local Ray cluster for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 turns token auth on; local test clusters need none
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
MICRO_CONFIG = ROOT / "configs" / "micro.yaml"


def load_benchmark(name: str):
    """A script under benchmarks/ imported as a module (benchmarks/ is not a package), for smoke tests."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    """ICG_TEST_TORCH_THREADS=N runs this process's torch with N intra-op threads: another float summation order,
    to find tests whose outcome depends on the machine (CI reruns the `float_sensitive` ones with one thread)."""
    threads = os.environ.get("ICG_TEST_TORCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: skipped (with the reason) where torch sees no GPU, as on CI."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason="needs CUDA (benchmarks/gpu_check.sh runs it on a GPU)"))


@pytest.fixture(scope="session")
def micro_cfg(tmp_path_factory):
    from icg_rl.config import load_config

    world_dir = tmp_path_factory.mktemp("micro_world")
    return load_config(MICRO_CONFIG, [f"world.dir={world_dir}"])


@pytest.fixture(scope="session")
def micro_world(micro_cfg):
    """The micro world and its models, built once: returns (config, summary)."""
    from icg_rl.commands.world import build

    summary = build(micro_cfg, Path(micro_cfg.world.dir), progress=False)
    return micro_cfg, summary


@pytest.fixture(scope="session")
def ray_cluster():
    """One small local Ray cluster for every test that needs Ray (startup costs seconds)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def micro_preference(micro_world, ray_cluster):
    """The micro world's preference model, trained once where `reward.preference: coverworld` finds it (the
    training tests' reward): returns (config, folder, summary)."""
    from icg_rl.commands.preference import train_and_evaluate

    cfg, _ = micro_world
    out = Path(cfg.world.dir) / "models" / "preference"
    return cfg, out, train_and_evaluate(cfg, out)


@pytest.fixture(scope="session")
def micro_checkpoint(micro_world, tmp_path_factory):
    """(checkpoint folder, known user ids, item ids): an ICGPipeline.save_pretrained folder of the micro world — a
    fresh policy with its adapter gate opened and a perturbed refiner, so users and titles change the images."""
    from tests.fresh_policy import save_fresh_policy

    cfg, _ = micro_world
    return save_fresh_policy(cfg, Path(tmp_path_factory.mktemp("checkpoint")) / "checkpoint", seed=0)
