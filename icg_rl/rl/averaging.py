"""The averaged policy: a uniform mean of the trainable weights over a run's last updates (SWA-style, with torch's
own `torch.optim.swa_utils.AveragedModel`), evaluated, checkpointed as `icg/` and exported instead of the last
iterate when `train.average_last` > 0.

    average = TailAverage(module, iterations=1000, fraction=0.5)   # module: the trainable parameters only
    ... optimizer.step(); average.after_update(iteration)          # iteration: 0-based index of that update
    arrays = average.arrays()                                      # {name: ndarray}: the averaged policy

Why: on CoverWorld the last iterate wanders — personalization (× user-zeroed) moves 0.03–0.06 between evaluations
100 iterations apart — and the mean of a run's last checkpoints lands where single iterates miss a target
(benchmarks/RESULTS.md, issue 18). The samplers keep the live weights: only the evaluated and shipped policy is the
mean. Before the window starts, the "average" is the live policy itself.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def averaging_start(iterations: int, fraction: float) -> int:
    """0-based index of the first update whose weights enter the mean: the last round(fraction × iterations)."""
    return iterations - max(1, round(fraction * iterations)) if fraction > 0 else iterations


class TailAverage:
    def __init__(self, module: nn.Module, iterations: int, fraction: float):
        self.module, self.start = module, averaging_start(iterations, fraction)
        self.mean = AveragedModel(module, device="cpu")  # a copy on CPU: the learner's device keeps its memory

    @property
    def count(self) -> int:
        """Updates averaged so far (0: the policy is still the live one)."""
        return int(self.mean.n_averaged)

    def after_update(self, iteration: int) -> None:
        if iteration >= self.start:
            self.mean.update_parameters(self.module)

    def named_parameters(self) -> dict[str, torch.Tensor]:
        """The policy to evaluate and ship: the mean once the window has begun, the live weights before."""
        source = self.mean.module if self.count else self.module
        return {name: p.detach() for name, p in source.named_parameters()}

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: p.to("cpu").contiguous().numpy().copy() for name, p in self.named_parameters().items()}

    def pipeline_arrays(self, pipe) -> dict[str, np.ndarray]:
        """`arrays()` under the pipeline's parameter names (the module holds them with "." spelled "__", as
        `TrainableParameters` registers them)."""
        mean = self.arrays()
        return {name: mean[name.replace(".", "__")] for name in pipe.trainable_named_parameters()}

    def state_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.mean.state_dict(), buffer)
        return buffer.getvalue()

    def load_state_bytes(self, payload: bytes) -> None:
        self.mean.load_state_dict(torch.load(io.BytesIO(payload), weights_only=True))
