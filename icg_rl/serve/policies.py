"""Named policies over one base: each policy's catalog entry, the start-up check that they can share one base and
MLLM, and the ICG weights a generator replica swaps in and out of its one pipeline.

An ICG checkpoint holds only what training changes (meta tokens, user encoder, refiner, adapter, LoRA) plus the item
features: 0.26 MB on CoverWorld, ~50 MB on SD1.5 + Qwen2-VL, next to a base of billions of frozen parameters. So a
replica loads the base and MLLM once, keeps each policy it serves as a snapshot of those tensors (on the pipeline's
device), and copies the snapshot into the live pipeline before that policy's batch runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from icg_rl.models.pipeline_mixin import CONFIG_NAME, WEIGHTS_NAME, saved_config

# icg_config.json keys that only shape a fresh initialisation: policies may differ in them
INIT_ONLY_KEYS = frozenset({"user_id_init_std"})


@dataclass(frozen=True)
class PolicyInfo:
    name: str
    checkpoint: Path
    model_version: str
    config: dict  # icg_config.json, with `base`/`mllm` as this application loads them


def model_version(checkpoint: Path) -> str:
    digest = hashlib.sha256((checkpoint / WEIGHTS_NAME).read_bytes()).hexdigest()
    return f"icg-{digest[:12]}"


def read_policies(checkpoints: dict[str, str], base: str | None = None, mllm: str | None = None
                  ) -> dict[str, PolicyInfo]:
    """Every policy's config and version, checked to share the first one's base, MLLM and ICG layout: a ValueError
    names the policy and the field that differs (FileNotFoundError the folder that is not a checkpoint)."""
    infos: dict[str, PolicyInfo] = {}
    for name, folder in checkpoints.items():
        folder = Path(folder)
        if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"policies.{name}: {folder} has no {WEIGHTS_NAME} and {CONFIG_NAME}; give a "
                                    f"training run's OUT/checkpoint (or an ICGPipeline.save_pretrained folder)")
        config = saved_config(folder, mllm)
        config["base"] = base or config["base"]
        infos[name] = PolicyInfo(name, folder, model_version(folder), config)
    first, *others = infos.values()
    for other in others:
        check_shareable(first, other)
    return infos


def check_shareable(first: PolicyInfo, other: PolicyInfo) -> None:
    """`other` can swap its ICG weights into `first`'s pipeline: same base and MLLM folders, same ICG config (user
    and item vocabularies, widths, LoRA ranks, prompt template), same tensor names and shapes."""
    def refuse(field: str, theirs, ours) -> None:
        raise ValueError(f"policies.{other.name}: {field} is {describe(theirs)}, but the first policy "
                         f"{first.name!r} has {describe(ours)}; policies served together share one base, MLLM and "
                         f"ICG layout (serve this one as its own application)")

    for key in ("base", "mllm"):
        if Path(other.config[key]).resolve() != Path(first.config[key]).resolve():
            refuse(f"{key} (from {other.checkpoint / CONFIG_NAME})", other.config[key], first.config[key])
    for key in sorted((set(first.config) | set(other.config)) - INIT_ONLY_KEYS - {"base", "mllm"}):
        if other.config.get(key) != first.config.get(key):
            refuse(f"{CONFIG_NAME}'s {key}", other.config.get(key), first.config.get(key))
    ours, theirs = tensor_shapes(first.checkpoint), tensor_shapes(other.checkpoint)
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
            refuse(f"{WEIGHTS_NAME}'s {key} shape", theirs.get(key, "absent"), ours.get(key, "absent"))


def tensor_shapes(checkpoint: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes from the safetensors header: no tensor is read."""
    with safe_open(str(checkpoint / WEIGHTS_NAME), framework="pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}


def describe(value) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)} ({', '.join(map(str, value[:3]))}{', …' if len(value) > 3 else ''})"
    return repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."


def live_tensors(pipe) -> dict[str, torch.Tensor]:
    """The pipeline's tensors an ICG checkpoint sets: its trainable parameters (the set weight sync ships,
    distributed/weights.py) plus the ICG buffers (the item features histories are made of)."""
    live = dict(pipe.trainable_named_parameters())
    live |= {f"icg.{name}": buffer for name, buffer in pipe.icg.named_buffers()}
    return live


class PolicyWeights:
    """One policy's ICG tensors, held beside the pipeline (what Serve's multiplexing LRU keeps per policy)."""

    def __init__(self, info: PolicyInfo, tensors: dict[str, torch.Tensor]):
        self.info, self.tensors = info, tensors

    @classmethod
    def load(cls, pipe, info: PolicyInfo) -> PolicyWeights:
        """Read the checkpoint into the live pipeline (its own checks of names and shapes) and keep a copy: the
        pipeline then holds this policy."""
        pipe.load_icg_weights(info.checkpoint)
        return cls(info, {name: t.detach().clone() for name, t in live_tensors(pipe).items()})

    def apply(self, live: dict[str, torch.Tensor]) -> None:
        """Copy this policy's tensors into the pipeline (`live`: live_tensors(pipe), computed once)."""
        with torch.no_grad():
            for name, target in live.items():
                target.copy_(self.tensors[name])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())
