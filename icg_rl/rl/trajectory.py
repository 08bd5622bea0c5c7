"""The Trajectory contract (docs/architecture.md §7): what a rollout records so a learner can recompute and score
every step.

    latents        [B, T+1, C, h, w]   x_T … x_0 (the sampled chain)
    log_probs      [B, T]              log π_old(x_{t−1} | x_t) at sampling time
    timesteps      [T]                 the scheduler's timesteps, in sampling order
    condition      dict[str, Tensor]   the raw conditioning inputs (MLLM prompt tensors, user index, history) —
                                       the learner recomputes the condition with its current weights
    prompt_embeds  [B, L, D]           the frozen text encoder's output for the prompt (not trained)
    pooled_embeds  [B, P] or None      the pooled text embedding of SDXL/SD3 bases (None for SD1.5 layouts)
    images         uint8 [B, H, W, 3]  the decoded samples
    group_key      [B] str             "user|item": the advantage group
    policy_version int                 weights version that sampled it (off-policy bookkeeping)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from icg_rl.models.mllm import IMAGE_KEYS

ROW_TENSORS = ("latents", "log_probs", "prompt_embeds")
TENSOR_FIELDS = ("latents", "log_probs", "timesteps", "prompt_embeds", "pooled_embeds")


@dataclass
class Trajectory:
    latents: torch.Tensor
    log_probs: torch.Tensor
    timesteps: torch.Tensor
    condition: dict[str, torch.Tensor]
    prompt_embeds: torch.Tensor
    images: np.ndarray
    group_key: np.ndarray
    policy_version: int = 0
    pooled_embeds: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)  # per-row batch fields rewards need (title, user_id, history, ...)

    def __post_init__(self) -> None:
        b, steps = self.log_probs.shape
        if self.latents.shape[:2] != (b, steps + 1):
            raise ValueError(f"latents {tuple(self.latents.shape)} must be [B, T+1, ...] for log_probs [{b}, {steps}]")
        if self.timesteps.shape != (steps,):
            raise ValueError(f"timesteps {tuple(self.timesteps.shape)} must be [T] = [{steps}]")
        if len(self.images) != b or len(self.group_key) != b:
            raise ValueError(f"images ({len(self.images)}) and group_key ({len(self.group_key)}) need {b} rows")

    @property
    def text(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The frozen text condition as the denoiser takes it: (prompt_embeds, pooled_embeds)."""
        return self.prompt_embeds, self.pooled_embeds

    def __len__(self) -> int:
        return self.log_probs.shape[0]

    def rows(self, index) -> Trajectory:
        """The sub-trajectory of some rows (slice, index array or bool mask)."""
        index = torch.as_tensor(np.arange(len(self))[index])
        np_index = index.numpy()
        return Trajectory(
            latents=self.latents[index], log_probs=self.log_probs[index], timesteps=self.timesteps,
            condition=slice_condition(self.condition, np_index), prompt_embeds=self.prompt_embeds[index],
            images=self.images[np_index], group_key=self.group_key[np_index], policy_version=self.policy_version,
            pooled_embeds=None if self.pooled_embeds is None else self.pooled_embeds[index],
            extra={k: np.asarray(v)[np_index] for k, v in self.extra.items()})

    @staticmethod
    def concat(parts: list[Trajectory]) -> Trajectory:
        if not parts:
            raise ValueError("Trajectory.concat: nothing to concatenate")
        if any(not torch.equal(p.timesteps, parts[0].timesteps) for p in parts):
            raise ValueError("Trajectory.concat: parts were sampled with different timesteps")
        return Trajectory(
            latents=torch.cat([p.latents for p in parts]), log_probs=torch.cat([p.log_probs for p in parts]),
            timesteps=parts[0].timesteps, condition=concat_conditions([p.condition for p in parts]),
            prompt_embeds=torch.cat([p.prompt_embeds for p in parts]),
            images=np.concatenate([p.images for p in parts]), group_key=np.concatenate([p.group_key for p in parts]),
            policy_version=min(p.policy_version for p in parts),
            pooled_embeds=None if parts[0].pooled_embeds is None else torch.cat([p.pooled_embeds for p in parts]),
            extra={k: np.concatenate([np.asarray(p.extra[k]) for p in parts]) for k in parts[0].extra})

    def to(self, device) -> Trajectory:
        """The tensors on `device` (a learner on GPU recomputes the recorded steps there)."""
        return Trajectory(
            latents=self.latents.to(device), log_probs=self.log_probs.to(device), timesteps=self.timesteps.to(device),
            condition={k: v.to(device) for k, v in self.condition.items()}, prompt_embeds=self.prompt_embeds.to(device),
            images=self.images, group_key=self.group_key, policy_version=self.policy_version, extra=self.extra,
            pooled_embeds=None if self.pooled_embeds is None else self.pooled_embeds.to(device))

    def to_wire(self) -> dict:
        """A compact, picklable form for Ray's object store: numpy arrays, half-size latents are not used (the
        ratio must be exactly 1 on unchanged weights, so latents stay float32)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in TENSOR_FIELDS:
            out[key] = None if out[key] is None else out[key].detach().cpu().numpy()
        out["condition"] = {k: v.detach().cpu().numpy() for k, v in self.condition.items()}
        return out

    @staticmethod
    def from_wire(wire: dict) -> Trajectory:
        data = dict(wire)
        for key in TENSOR_FIELDS:
            if data.get(key) is not None:
                data[key] = torch.from_numpy(np.array(data[key]))  # a copy: Ray hands out read-only arrays
        data["condition"] = {k: torch.from_numpy(np.array(v)) for k, v in wire["condition"].items()}
        return Trajectory(**data)


# The MLLM's image tensors hold only the rows that have an image, in row order (`mllm.has_image` says which rows);
# slicing keeps each row together with its image.
IMAGE_CONDITION_KEYS = tuple(f"mllm.{k}" for k in IMAGE_KEYS)


def slice_condition(condition: dict[str, torch.Tensor], index: np.ndarray) -> dict[str, torch.Tensor]:
    out = {k: v[torch.as_tensor(index)] for k, v in condition.items() if k not in IMAGE_CONDITION_KEYS}
    has = condition["mllm.has_image"].bool().numpy() if "mllm.has_image" in condition else None
    if has is None or not any(k in condition for k in IMAGE_CONDITION_KEYS):
        return out
    image_number = np.cumsum(has) - 1  # which image each image-owning row has
    chosen = [int(image_number[i]) for i in index if has[i]]
    for key in IMAGE_CONDITION_KEYS:
        if key not in condition:
            continue
        value = condition[key]
        if key == "mllm.pixel_values" and "mllm.image_grid_thw" in condition:
            sizes = condition["mllm.image_grid_thw"].prod(-1).tolist()  # Qwen: patches per image, concatenated
            starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
            out[key] = torch.cat([value[starts[c]:starts[c + 1]] for c in chosen]) if chosen else value[:0]
        else:
            out[key] = value[torch.as_tensor(chosen, dtype=torch.long)]
    return out


def concat_conditions(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    keys = parts[0].keys()
    out = {}
    for key in keys:
        tensors = [p[key] for p in parts]
        if tensors[0].ndim >= 2 and key in ("mllm.input_ids", "mllm.attention_mask", "mllm.mm_token_type_ids"):
            width = max(t.shape[1] for t in tensors)  # right-pad prompts to a common length
            tensors = [torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors]
        out[key] = torch.cat(tensors)
    return out
