"""The trainable part of an ICG pipeline as one module and as plain arrays: what the learner optimises, what weight
sync ships to rollout actors, and what the averaged policy swaps in for an evaluation. The frozen base never moves.

    arrays = trainable_arrays(pipe)              # {name: float ndarray}, CPU, a few MB at most
    load_trainable_arrays(pipe, arrays)          # names and shapes must match exactly (load_state_dict, strict)
    with weights_loaded(pipe, arrays): ...       # other weights inside the block, the pipeline's own after it
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


class TrainableParameters(nn.Module):
    """The pipeline's trainable parameters, shared (not copied), under sanitised names ('.' -> '__'): DeepSpeed's
    engine module and the target of every load — never the frozen base."""

    def __init__(self, named: dict[str, nn.Parameter]):
        super().__init__()
        for name, param in named.items():
            self.register_parameter(name.replace(".", "__"), param)


def trainable_arrays(pipe) -> dict[str, np.ndarray]:
    """The pipeline's trainable parameters as contiguous CPU numpy arrays (what crosses the object store)."""
    return {name: p.detach().to("cpu").contiguous().numpy().copy()
            for name, p in pipe.trainable_named_parameters().items()}


def nbytes(arrays: dict[str, np.ndarray]) -> int:
    return int(sum(a.nbytes for a in arrays.values()))


def load_trainable_arrays(pipe, arrays: dict[str, np.ndarray]) -> None:
    """Copy arrays into the pipeline's trainable parameters: names and shapes must match exactly (checked first, for
    an error that names the parameter), then `load_state_dict(strict=True)` casts each to its parameter's device and
    dtype."""
    params = pipe.trainable_named_parameters()
    missing, unexpected = sorted(set(params) - set(arrays)), sorted(set(arrays) - set(params))
    if missing or unexpected:
        raise ValueError(f"weight sync: parameter names differ from this model (missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}); rollout and learner must be built from the same config")
    for name, param in params.items():
        if tuple(arrays[name].shape) != tuple(param.shape):
            raise ValueError(f"weight sync: {name} has shape {tuple(arrays[name].shape)}, the model's is "
                             f"{tuple(param.shape)}")
    # a copy: Ray hands out read-only arrays, which torch.from_numpy warns about
    state = {name.replace(".", "__"): torch.from_numpy(np.array(value)) for name, value in arrays.items()}
    TrainableParameters(params).load_state_dict(state, strict=True)


@contextmanager
def weights_loaded(pipe, arrays: dict[str, np.ndarray] | None):
    """The pipeline with `arrays` as its trainable weights inside the block and its own put back after (the
    averaged policy on a learner or rollout actor, `rl/averaging.py`); None: the pipeline as it is."""
    if arrays is None:
        yield pipe
        return
    held = trainable_arrays(pipe)
    load_trainable_arrays(pipe, arrays)
    try:
        yield pipe
    finally:
        load_trainable_arrays(pipe, held)
