"""Speed settings of the denoiser in rollouts and in the learner (`rollout.*` / `learner.*` precision, compile,
gradient checkpointing): torch's and diffusers' own mechanisms, applied once to a pipeline, never changing the
math beyond float order (tests/rl/test_speed.py compares log-probs and gradients with eager fp32).

    prepare_denoiser(pipe, compile="regional", gradient_checkpointing=True)
    with autocast(pipe.device, "bf16"):
        trajectory, _ = sample_trajectory(pipe, ...)

- `regional`: diffusers' `compile_repeated_blocks` (the UNet's transformer blocks; the SD3 transformer's joint
  blocks, which diffusers does not list) — each block class compiles once and is reused, so compile time stays
  short while the blocks, where the FLOPs are, run compiled.
- `full`: the whole denoiser; `reduce-overhead`: full plus CUDA graphs, for the fixed-shape sampling loop on GPUs
  (on CPU it compiles like `full`).
- bf16 is autocast: parameters (the trainable ones and the optimizer's) stay fp32, matmuls and convolutions run in
  bf16; the DDIM / flow step and its Gaussian log-prob work on the fp32 latents either way.
"""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)
REPEATED_BLOCKS = ("BasicTransformerBlock", "JointTransformerBlock")  # UNet (SD1.x/2.x/XL) and SD3 blocks


def prepare_denoiser(pipe, compile: str = "off", gradient_checkpointing: bool = False) -> None:
    """Apply the compile mode and gradient checkpointing to `pipe.denoiser` in place."""
    denoiser = pipe.denoiser
    if gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    if compile == "off":
        return
    if compile == "regional":
        blocks = tuple(getattr(denoiser, "_repeated_blocks", None) or ()) + REPEATED_BLOCKS
        compiled = [m for m in denoiser.modules() if type(m).__name__ in blocks]
        if not compiled:
            raise ValueError(f"compile=regional: {type(denoiser).__name__} has none of the repeated blocks "
                             f"{sorted(set(blocks))}; use compile=full")
        for module in compiled:
            module.compile(dynamic=False)
        log.info("compiled %d repeated blocks of the %s (regional)", len(compiled), type(denoiser).__name__)
    elif compile in ("full", "reduce-overhead"):
        denoiser.compile(dynamic=False, **({"mode": "reduce-overhead"} if compile == "reduce-overhead" else {}))
        log.info("compiled the %s (%s)", type(denoiser).__name__, compile)
    else:
        raise ValueError(f"compile: {compile!r}; choose from off, regional, full, reduce-overhead")


def autocast(device: torch.device | str, precision: str):
    """bf16 autocast on the device for precision 'bf16'; a no-op context for 'fp32'."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision: {precision!r}; choose from fp32, bf16")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
