"""Weight sync (docs/architecture.md §8): after each learner update, the trainable parameters only, versioned.

    arrays = trainable_arrays(pipe)                  # learner rank 0: {name: float ndarray}, a few MB at most
    ref = ray.put(arrays)                            # or the learner task's own return ref: no driver round trip
    receiver.apply(pipe, version, arrays)            # rollout actor: refuses a version it has already moved past

The frozen base (UNet, VAE, text encoder, MLLM) never moves; a rollout is tagged with the version it used and a
rollout that asks for another version than the actor holds fails instead of sampling with stale weights.
"""

from __future__ import annotations

import numpy as np

from icg_rl.models.trainable import load_trainable_arrays


class StaleWeightsError(RuntimeError):
    """A rollout actor was asked to sample with, or load, weights older than (or other than) what it holds."""


class VersionedWeights:
    """The weights version an actor holds; `apply` only moves forward, `check` guards every rollout."""

    def __init__(self, version: int = 0):
        self.version = version

    def apply(self, pipe, version: int, arrays: dict[str, np.ndarray]) -> None:
        if version <= self.version and not (version == 0 == self.version):
            raise StaleWeightsError(f"weights version {version} is not newer than the held version {self.version}")
        load_trainable_arrays(pipe, arrays)
        self.version = version

    def rewind(self) -> None:
        """The run went back to a checkpoint (its learner group was rebuilt): the next weights may be older than
        the held ones, and are taken as the first sync is."""
        self.version = -1

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
