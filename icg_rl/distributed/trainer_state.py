"""What a run's driver saves, restores and rebuilds (docs/architecture.md §8): checkpoints, exact resume, and a
lost learner group rebuilt in the run.

    files = trainer.state_files()        # the driver's state, the ICG weights, every learner rank's DeepSpeed state
    trainer.restore(files)               # back to that iteration exactly (the data stream rewinds with it)
    trainer.recover_learner(files)       # a learner rank died: a new group, restored from `files` (None: the start)

Resume is exact (noise and timestep draws derive from (seed, iteration), rl/seeding.py), so a run that rebuilt its
learner group from a checkpoint and redid the iterations since ends with the weights of one that never failed.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("icg_rl.train")


class TrainerState:
    """Checkpoint and recovery methods of `RayTrainer` (trainer.py), which owns the state they read and write."""

    def driver_state(self) -> dict:
        """The driver's own state: counters, data position, reward normalisation, advantage tracker, RNGs."""
        # with async rollouts the next batch is already drawn (and being sampled): record the position before it
        epoch, batch_in_epoch = self.position if self.pending is not None else (self.epoch, self.batch_in_epoch)
        return {"iteration": self.iteration, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "version": self.version, "mixer": self.mixer.state_dict(), "tracker": self.tracker.state_dict(),
                "algo": self.cfg.algo.name, "learner_workers": self.cfg.ray.learner_workers,
                "rng": {"python": repr(random.getstate()), "numpy": repr(np.random.get_state(legacy=False)),
                        "torch": torch.get_rng_state().tolist()}}

    def state_files(self) -> dict[str, bytes]:
        """Everything an exact resume needs. Noise and timestep draws derive from (seed, iteration) (rl/seeding.py),
        so the iteration counter stands for every actor's RNG; the driver's own RNG states are kept as well."""
        files = {"trainer_state.json": json.dumps(self.driver_state()).encode()}
        files |= {f"icg/{name}": payload for name, payload in self.learner.export().items()}
        files |= {f"learner/{name}": payload for name, payload in self.learner.save_state().items()}
        return files

    def restore(self, files: dict[str, bytes]) -> None:
        from icg_rl.distributed.checkpoint import subtree

        state = json.loads(files["trainer_state.json"])
        for key, now in (("algo", self.cfg.algo.name), ("learner_workers", self.cfg.ray.learner_workers)):
            if state[key] != now:
                raise ValueError(f"resume: the checkpoint was written with {key}={state[key]!r}, this run has "
                                 f"{now!r}; resume with the same setting")
        self.learner.load_state(subtree(files, "learner"))
        self.restore_driver(state)

    def restore_driver(self, state: dict) -> None:
        """The driver back to `state` (`driver_state`), the data stream rewound, the rollouts given the weights."""
        self.mixer.load_state_dict(state["mixer"])
        self.tracker.load_state_dict(state["tracker"])
        torch.set_rng_state(torch.tensor(state["rng"]["torch"], dtype=torch.uint8))
        self._batches.close()
        self.pending = None
        self.iteration, self.epoch, self.batch_in_epoch = state["iteration"], state["epoch"], state["batch_in_epoch"]
        self._batches = self._batch_stream()
        self.sync_weights()

    def recover_learner(self, files: dict[str, bytes] | None) -> None:
        """A learner rank died (its actor, its process or its node): the group is rebuilt — once the cluster has
        room, waiting up to `ray.resource_wait_s` as at start — and restored from `files`, the newest intact
        checkpoint (None: none was written yet, and the new group's initial weights are the run's). The driver
        rewinds with it; the rollout actors take the checkpoint's (older) weights."""
        from icg_rl.distributed.learner import LearnerGroup
        from icg_rl.distributed.placement import check_fits

        r = self.cfg.ray
        self.learner.shutdown()  # the survivors too: DeepSpeed's process group cannot take a new rank in
        check_fits({"learner group": (r.learner_workers, *r.role("learner"))}, r.resource_wait_s)
        self.learner = LearnerGroup(self.cfg, *self.context_refs, r.learner_workers, *r.role("learner"),
                                    threads=self.threads["learner"])
        self.rollout.rewind()
        self.weight_group_formed = False  # a weight group's source was learner rank 0: formed again
        if files is not None:
            self.restore(files)
        else:
            self.restore_driver(self.initial_state)

    def export(self, folder: Path) -> Path:
        """The ICG weights that ship (averaged when `train.average_last` > 0) into `folder`, atomically (written
        beside it, then renamed into place)."""
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, payload in self.learner.export().items():
            (tmp / name).write_bytes(payload)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        return folder
