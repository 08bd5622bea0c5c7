"""Weight sync (docs/architecture.md §8): after each learner update, the trainable parameters only, versioned.

    arrays = trainable_arrays(pipe)                  # learner rank 0: {name: float ndarray}, a few MB at most
    ref = ray.put(arrays)                            # or the learner task's own return ref: no driver round trip
    receiver.apply(pipe, version, arrays)            # rollout actor: refuses a version it has already moved past

The frozen base (UNet, VAE, text encoder, MLLM) never moves; a rollout is tagged with the version it used and a
rollout that asks for another version than the actor holds fails instead of sampling with stale weights.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch


class StaleWeightsError(RuntimeError):
    """A rollout actor was asked to sample with, or load, weights older than (or other than) what it holds."""


def trainable_arrays(pipe) -> dict[str, np.ndarray]:
    """The pipeline's trainable parameters as contiguous CPU numpy arrays (what crosses the object store)."""
    return {name: p.detach().to("cpu").contiguous().numpy().copy()
            for name, p in pipe.trainable_named_parameters().items()}


def nbytes(arrays: dict[str, np.ndarray]) -> int:
    return int(sum(a.nbytes for a in arrays.values()))


def load_trainable_arrays(pipe, arrays: dict[str, np.ndarray]) -> None:
    """Copy arrays into the pipeline's trainable parameters; names and shapes must match exactly."""
    params = pipe.trainable_named_parameters()
    missing, unexpected = sorted(set(params) - set(arrays)), sorted(set(arrays) - set(params))
    if missing or unexpected:
        raise ValueError(f"weight sync: parameter names differ from this model (missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}); rollout and learner must be built from the same config")
    with torch.no_grad():
        for name, param in params.items():
            value = torch.from_numpy(np.array(arrays[name]))  # a copy: Ray hands out read-only arrays
            if value.shape != param.shape:
                raise ValueError(f"weight sync: {name} has shape {tuple(value.shape)}, the model's is "
                                 f"{tuple(param.shape)}")
            param.copy_(value.to(param.device, param.dtype))


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


class VersionedWeights:
    """The weights version an actor holds; `apply` only moves forward, `check` guards every rollout."""

    def __init__(self, version: int = 0):
        self.version = version

    def apply(self, pipe, version: int, arrays: dict[str, np.ndarray]) -> None:
        if version <= self.version and not (version == 0 == self.version):
            raise StaleWeightsError(f"weights version {version} is not newer than the held version {self.version}")
        load_trainable_arrays(pipe, arrays)
        self.version = version

    def accept(self, version: int) -> bool:
        """A group sync (`weight_sync.py`) of `version`: True = load it (newer, or the first sync); False = this
        actor holds it already (a resync after another actor restarted); older: StaleWeightsError."""
        if version < self.version:
            raise StaleWeightsError(f"weights version {version} is older than the held version {self.version}")
        if version == self.version != 0:
            return False
        self.version = version
        return True

    def check(self, wanted: int) -> None:
        if wanted != self.version:
            raise StaleWeightsError(f"rollout asked for weights version {wanted}, this actor holds {self.version}; "
                                    f"sync weights before sampling")
