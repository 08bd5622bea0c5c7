"""The LearnerGroup (docs/architecture.md §1, §8): N actors in one torch.distributed group, each wrapping the
trainable ICG parameters (+LoRA) in a DeepSpeed engine, running DDPO or reward backprop with the math of `rl/local.py`.

    group = LearnerGroup(cfg, user_ids, item_features, num_workers=2, num_cpus=0.5)
    metrics = group.update_ddpo(trajectory, advantages, iteration)     # rows split evenly over the ranks
    metrics = group.update_nft(samples, optimality, iteration)         # DiffusionNFT on clean samples
    weights_ref, nbytes = group.weights()                              # rank 0's trainable arrays, as an ObjectRef

Data parallel: each rank computes the mean loss of its rows; DeepSpeed averages gradients over ranks, so N ranks
with B/N rows each take the step one rank takes with B rows. Every rank draws the same timesteps / truncation
(`rl/seeding.py`), and for reward backprop the mixer normalises with the statistics of the global batch.

DDPO's gradient is computed by `rl/ddpo.ddpo_gradients` (per-step autograd, as in-process) and handed to the
engine as one `engine.backward` of a surrogate whose gradient is exactly that; DeepSpeed then reduces (ZeRO-2
partitions), clips and steps. The engine's optimizer, clipping and batch sizes come from `algo`/`data`; the JSON
file (`ray.deepspeed_config`) holds ZeRO stage and precision.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from icg_rl.distributed.placement import in_object_store, torch_threads
from icg_rl.distributed.weight_sync import WeightGroupMember
from icg_rl.models.trainable import (
    TrainableParameters,
    load_trainable_arrays,
    nbytes,
    trainable_arrays,
    weights_loaded,
)
from icg_rl.rl.seeding import update_generator
from icg_rl.rl.speed import autocast, prepare_denoiser

REPO_ROOT = Path(__file__).resolve().parents[2]
OWNED_KEYS = ("optimizer", "gradient_clipping", "train_batch_size", "train_micro_batch_size_per_gpu",
              "gradient_accumulation_steps")


def deepspeed_config(cfg, rows_per_rank: int, world_size: int, cuda: bool = False) -> dict:
    """The JSON file's settings plus what our config owns (optimizer = the in-process trainer's AdamW; torch's
    fused kernel on CUDA learners when `learner.fused_optimizer`)."""
    path = Path(cfg.ray.deepspeed_config)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"ray.deepspeed_config: {cfg.ray.deepspeed_config} does not exist (looked in the "
                                f"working directory and {REPO_ROOT})")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"ray.deepspeed_config: {path} is not valid JSON: {err}") from err
    clashing = sorted(k for k in OWNED_KEYS if k in ds)
    if clashing:
        raise ValueError(f"ray.deepspeed_config: {path} sets {clashing}; these come from algo.* and data.* (lr, "
                         f"max_grad_norm, pairs_per_batch × samples_per_pair) — remove them from the file")
    algo = cfg.algo
    return ds | {
        "train_micro_batch_size_per_gpu": rows_per_rank, "gradient_accumulation_steps": 1,
        "train_batch_size": rows_per_rank * world_size, "gradient_clipping": algo.max_grad_norm,
        "optimizer": {"type": "AdamW", "params": {"lr": algo.lr, "betas": [0.9, 0.999], "eps": 1e-8,
                                                  "weight_decay": 0.01, "torch_adam": True}
                      | ({"fused": True} if cuda and cfg.learner.fused_optimizer else {})},
    }


class LearnerWorker(WeightGroupMember):  # rank 0 is the source of a weight group (ray.weight_sync)
    def __init__(self, cfg, rank: int, world_size: int, user_ids: list[str], item_features: dict,
                 threads: int | None = 1, device: str | None = None, initial_weights: dict | None = None):
        from icg_rl.models.pipeline import pipeline_from_config

        if threads is not None:
            torch.set_num_threads(threads)
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        torch.manual_seed(cfg.train.seed)  # same initial ICG weights on every rank (and as rl/local.py)
        self.pipe = pipeline_from_config(cfg, user_ids=user_ids, item_features=item_features)
        if initial_weights is not None:  # before the engine exists: ZeRO keeps its own fp32 copy afterwards
            load_trainable_arrays(self.pipe, initial_weights)
        self.pipe.to(device or "cpu")
        self.pipe.set_progress_bar_config(disable=True)
        prepare_denoiser(self.pipe, cfg.learner.compile, cfg.learner.gradient_checkpointing)
        self.engine, self.average = None, None

    def node_address(self) -> tuple[str, int]:
        """This node's IP and a free port: rank 0's becomes the group's rendezvous."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int, rows_per_rank: int) -> dict:
        import deepspeed

        os.environ.update({"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": "0",
                           "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)})
        backend = "nccl" if self.pipe.device.type == "cuda" else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
        module = TrainableParameters(self.pipe.trainable_named_parameters())
        self.engine, *_ = deepspeed.initialize(model=module, model_parameters=list(module.parameters()),
                                               config=deepspeed_config(self.cfg, rows_per_rank, self.world_size,
                                                                       cuda=self.pipe.device.type == "cuda"))
        if self.cfg.algo.name == "backprop":
            self._build_rewards()
        from icg_rl.rl.critic import build_critic

        self.critic = build_critic(self.cfg, self.pipe)  # nft's learned critic (rl/critic.py), else None
        if self.cfg.train.average_last > 0:
            from icg_rl.rl.averaging import TailAverage

            self.average = TailAverage(module, self.cfg.train.iterations, self.cfg.train.average_last)
        return {"rank": self.rank, "backend": backend, "zero_stage": self.engine.zero_optimization_stage(),
                "parameters": sum(p.numel() for p in module.parameters()), "pid": os.getpid()}  # (which process)

    def _build_rewards(self) -> None:
        from icg_rl.rewards.mix import RewardMixer
        from icg_rl.rewards.registry import build_reward
        from icg_rl.rl.backprop import check_differentiable

        weights = {k: v for k, v in self.cfg.reward.weights.items() if v != 0}
        self.rewards = {n: build_reward(n, self.cfg.reward, self.cfg.world.dir).to(self.pipe.device)
                        for n in weights}
        check_differentiable(self.rewards, weights)
        self.mixer = RewardMixer.from_config(weights, self.cfg.reward)

    def _step(self, surrogate: torch.Tensor, iteration: int, last: bool = True) -> float:
        """One engine step; `last`: the iteration's last (nft's inner steps), which the tail average takes in."""
        self.engine.backward(surrogate)
        self.engine.step()
        if self.average is not None and last:  # ZeRO-2 has gathered the updated weights into every rank's module
            self.average.after_update(iteration)
        return float(self.engine.get_global_grad_norm() or 0.0)

    def ddpo_step(self, wire: dict, advantages: np.ndarray, iteration: int) -> dict[str, float]:
        from icg_rl.rl.ddpo import ddpo_gradients, gradient_surrogate
        from icg_rl.rl.trajectory import Trajectory

        start = time.perf_counter()
        trajectory = Trajectory.from_wire(wire).to(self.pipe.device)
        params, epochs = self.pipe.trainable_parameters(), self.cfg.algo.ppo_epochs
        generator, metrics = update_generator(self.cfg.train.seed, iteration), {}
        for epoch in range(epochs):  # after the first, the ratio to the sampling policy moves and the clip acts
            with autocast(self.pipe.device, self.cfg.learner.precision):
                grads, step_metrics = ddpo_gradients(self.pipe, trajectory,
                                                     torch.as_tensor(advantages).to(self.pipe.device), self.cfg.algo,
                                                     generator)
            gradients_done = time.perf_counter()
            grad_norm = self._step(gradient_surrogate(params, grads), iteration, last=epoch == epochs - 1)
            metrics = step_metrics if not metrics else metrics | {  # the last epoch's trust-region statistics
                k: v for k, v in step_metrics.items() if k.startswith("stats/")}
        metrics["stats/grad_norm"] = grad_norm
        # inside the actor: what the learn phase costs beyond these is transport and the driver's wait
        return metrics | {"perf/learner_gradients_s": gradients_done - start,
                          "perf/learner_optimizer_s": time.perf_counter() - gradients_done}

    def nft_step(self, wire: dict, optimality: np.ndarray, iteration: int, first_row: int,
                 critic_input: dict | None = None) -> dict[str, float]:
        """DiffusionNFT on this rank's clean samples, rows `first_row …` of the batch (`rl/nft.py`):
        `algo.nft_inner_steps` engine steps. With a critic, `critic_input` holds the whole sampled batch and its
        advantages (every rank fits the same critic) and the rows this rank climbs it on."""
        from icg_rl.rl.critic_climb import critic_term
        from icg_rl.rl.ddpo import gradient_surrogate
        from icg_rl.rl.nft import nft_update
        from icg_rl.rl.trajectory import Trajectory

        start = time.perf_counter()
        term, critic_metrics = None, {}
        if self.critic is not None:
            sampled = Trajectory.from_wire(critic_input["samples"]).to(self.pipe.device)
            term, critic_metrics = critic_term(self.pipe, sampled, torch.as_tensor(critic_input["advantages"]),
                                               self.critic, self.cfg.algo, self.cfg.train.seed, iteration,
                                               critic_input["rows"][self.rank], **critic_input["evidence"])
        samples = Trajectory.from_wire(wire).to(self.pipe.device)
        params, steps = self.pipe.trainable_parameters(), self.cfg.algo.nft_inner_steps
        taken = []

        def apply(grads) -> float:
            taken.append(None)
            return self._step(gradient_surrogate(params, grads), iteration, last=len(taken) == steps)

        with autocast(self.pipe.device, self.cfg.learner.precision):
            metrics = nft_update(self.pipe, samples, torch.as_tensor(optimality).to(self.pipe.device),
                                 self.cfg.algo, self.cfg.train.seed, iteration, first_row, apply, term)
        return metrics | critic_metrics | {"perf/learner_update_s": time.perf_counter() - start}

    def backprop_step(self, batch: dict, prefix_wire: dict, iteration: int) -> tuple[dict[str, float], np.ndarray]:
        """The last K steps from the rollout actors' x_{T−K}, the rewards, one step -> (metrics, uint8 covers)."""
        from icg_rl.models.images import to_uint8
        from icg_rl.rl.backprop import backprop_loss, prefix_from_wire

        prefix, noise = prefix_from_wire(prefix_wire)
        with autocast(self.pipe.device, self.cfg.learner.precision):
            loss, metrics, images = backprop_loss(self.pipe, batch, self.rewards, self.mixer, self.cfg.algo,
                                                  update_generator(self.cfg.train.seed, iteration), noise,
                                                  self._gather_scores, prefix=prefix)
        metrics["stats/grad_norm"] = self._step(loss, iteration)
        return metrics, to_uint8(images)

    def _gather_scores(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every rank's scores, in rank order (equal shard sizes), for the mixer's global statistics."""
        if self.world_size == 1:
            return scores
        out = {}
        for name, s in scores.items():
            parts = [torch.empty_like(s) for _ in range(self.world_size)]
            torch.distributed.all_gather(parts, s.contiguous())
            out[name] = torch.cat(parts)
        return out

    def weights(self, averaged: bool = False) -> tuple[dict[str, np.ndarray], int]:
        """The live trainable weights (what rollouts sample with), or the averaged policy (`rl/averaging.py`;
        the live ones when averaging is off)."""
        arrays = self._averaged_arrays() if averaged and self.average is not None else trainable_arrays(self.pipe)
        return arrays, nbytes(arrays)

    def _averaged_arrays(self) -> dict[str, np.ndarray]:
        return self.average.pipeline_arrays(self.pipe)

    def save_state(self) -> dict[str, bytes]:
        """This rank's DeepSpeed checkpoint files (weights, ZeRO optimizer partition; collective: every rank at
        once), plus the backprop mixer's statistics from rank 0."""
        with tempfile.TemporaryDirectory() as tmp:
            self.engine.save_checkpoint(tmp, tag="state", save_latest=False)
            files = {str(p.relative_to(tmp)): p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()}
        if self.rank == 0 and getattr(self, "mixer", None) is not None:
            files["mixer.json"] = json.dumps(self.mixer.state_dict()).encode()
        if self.rank == 0 and self.average is not None:
            files["average.pt"] = self.average.state_bytes()
        if self.rank == 0 and self.critic is not None:
            files["critic.pt"] = self.critic.state_bytes()
        return files

    def load_state(self, files: dict[str, bytes]) -> None:
        """Restore what `save_state` wrote (every rank's files, merged): weights, optimizer moments, mixer."""
        with tempfile.TemporaryDirectory() as tmp:
            for rel, payload in files.items():
                (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / rel).write_bytes(payload)
            path, _ = self.engine.load_checkpoint(tmp, tag="state", load_optimizer_states=True,
                                                  load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"learner rank {self.rank}: DeepSpeed found no checkpoint in the restored files "
                               f"({sorted(files)[:6]})")
        if "mixer.json" in files and getattr(self, "mixer", None) is not None:
            self.mixer.load_state_dict(json.loads(files["mixer.json"]))
        if self.critic is not None:
            if "critic.pt" not in files:
                raise ValueError("resume: algo.nft_critic_weight > 0 but the checkpoint holds no critic (written "
                                 "without one); resume with the same setting")
            self.critic.load_state_bytes(files["critic.pt"])
        if self.average is not None:
            if "average.pt" not in files:
                raise ValueError("resume: train.average_last > 0 but the checkpoint holds no averaged weights "
                                 "(written with train.average_last=0); resume with the same setting")
            self.average.load_state_bytes(files["average.pt"])

    def export(self) -> dict[str, bytes]:
        """The policy to ship — averaged when `train.average_last` > 0 — as `ICGPipeline.save_pretrained` writes
        it, as file bytes (the driver writes them where it runs: the learner may be on another node)."""
        shipped = self._averaged_arrays() if self.average is not None else None
        with tempfile.TemporaryDirectory() as tmp, weights_loaded(self.pipe, shipped) as pipe:
            pipe.save_pretrained(tmp)
            return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


class LearnerGroup:
    """`num_workers` LearnerWorker actors in a placement group (packed), forming one DeepSpeed world."""

    def __init__(self, cfg, user_ids: list[str], item_features: dict, num_workers: int, num_cpus: float,
                 num_gpus: float = 0.0, threads: int | None = None, timeout_s: float = 600.0,
                 initial_weights: dict | None = None):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        rows = cfg.data.pairs_per_batch * cfg.data.samples_per_pair
        if rows % num_workers:
            raise ValueError(f"ray.learner_workers={num_workers} must divide the batch of data.pairs_per_batch × "
                             f"data.samples_per_pair = {rows} rows (every rank takes an equal share)")
        self.rows_per_rank, self.num_workers, self.cfg = rows // num_workers, num_workers, cfg
        bundle = {"CPU": num_cpus} | ({"GPU": num_gpus} if num_gpus > 0 else {})
        self.placement = placement_group([bundle] * num_workers, strategy="PACK")
        ray.get(self.placement.ready(), timeout=timeout_s)
        actor_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(LearnerWorker)
        users_ref, features_ref = in_object_store(user_ids), in_object_store(item_features)  # one copy for all
        threads = torch_threads(num_cpus, threads)
        device = "cuda" if num_gpus > 0 else None
        self.actors = [actor_cls.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            self.placement, placement_group_bundle_index=rank)).remote(
            cfg, rank, num_workers, users_ref, features_ref, threads, device, initial_weights)
            for rank in range(num_workers)]
        try:
            addr, port = ray.get(self.actors[0].node_address.remote(), timeout=timeout_s)
            self.info = ray.get([a.setup.remote(addr, port, self.rows_per_rank) for a in self.actors],
                                timeout=timeout_s)
        except BaseException:  # a rank died while starting: nothing of this group may outlive the error
            self.shutdown()
            raise

    def _shards(self, n: int) -> list[slice]:
        """Equal contiguous shards, one per rank: the batch the group was set up for, or (nft with covers shown to
        other users, rl/relabel.py) a multiple of it."""
        if n % (self.rows_per_rank * self.num_workers):
            raise ValueError(f"learner batch has {n} rows; the group was set up for a multiple of "
                             f"{self.rows_per_rank * self.num_workers}")
        per_rank = n // self.num_workers
        return [slice(r * per_rank, (r + 1) * per_rank) for r in range(self.num_workers)]

    def update_ddpo(self, trajectory, advantages: np.ndarray, iteration: int) -> dict[str, float]:
        import ray

        refs = [a.ddpo_step.remote(trajectory.rows(s).to_wire(), advantages[s], iteration)
                for a, s in zip(self.actors, self._shards(len(trajectory)))]
        return mean_metrics(ray.get(refs))

    def update_nft(self, samples, optimality: np.ndarray, iteration: int, sampled=None,
                   advantages: np.ndarray | None = None, **evidence) -> dict[str, float]:
        """NFT on `samples` (sampled covers, plus any shown to other users); with a critic (rl/critic.py) the batch,
        its advantages and `evidence` (critic_term's shown, floored) go to every rank, which climbs it on its share."""
        import ray

        critic_input = None
        if self.cfg.algo.nft_critic_weight > 0:
            share = len(sampled) // self.num_workers
            critic_input = ray.put({"samples": sampled.to_wire(), "advantages": advantages, "evidence": evidence,
                                    "rows": [slice(r * share, (r + 1) * share) for r in range(self.num_workers)]})
        refs = [a.nft_step.remote(samples.rows(s).to_wire(), optimality[s], iteration, s.start, critic_input)
                for a, s in zip(self.actors, self._shards(len(samples)))]
        return mean_metrics(ray.get(refs))

    def update_backprop(self, batch: dict, prefix_wire: dict, iteration: int) -> tuple[dict[str, float], np.ndarray]:
        """One reward-backprop step from the rollout actors' prefix -> (mean metrics, covers uint8 [B, H, W, 3])."""
        import ray

        from icg_rl.distributed.reward import slice_batch
        from icg_rl.rl.backprop import slice_prefix_wire

        n = len(batch["group_key"])
        refs = [a.backprop_step.remote(slice_batch(batch, s.start, s.stop, n), slice_prefix_wire(prefix_wire, s),
                                       iteration) for a, s in zip(self.actors, self._shards(n))]
        results = ray.get(refs)
        return mean_metrics([m for m, _ in results]), np.concatenate([images for _, images in results])

    def weights(self, averaged: bool = False) -> tuple[object, int]:
        """(ObjectRef of rank 0's trainable arrays — live, or the averaged policy — and their size in bytes);
        the arrays never pass the driver."""
        import ray

        arrays_ref, size_ref = self.actors[0].weights.options(num_returns=2).remote(averaged)
        return arrays_ref, int(ray.get(size_ref))

    def export(self) -> dict[str, bytes]:
        import ray

        return ray.get(self.actors[0].export.remote())

    @property
    def source(self):
        """Rank 0: where rollout actors' weights come from (every rank holds the same weights after a step)."""
        return self.actors[0]

    def save_state(self) -> dict[str, bytes]:
        """Every rank's checkpoint files, merged (names are distinct per rank; rank 0 writes the shared ones)."""
        import ray

        merged: dict[str, bytes] = {}
        for files in ray.get([a.save_state.remote() for a in self.actors]):
            merged |= files
        return merged

    def load_state(self, files: dict[str, bytes]) -> None:
        import ray

        ref = ray.put(files)
        ray.get([a.load_state.remote(ref) for a in self.actors])

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if self.placement is not None:  # shut down twice when a rebuild after a loss fails too
            remove_placement_group(self.placement)
        self.actors, self.placement = [], None


def mean_metrics(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """Average each metric over ranks (every rank logs the mean of its own equal-sized shard)."""
    keys = per_rank[0].keys()
    return {k: float(np.mean([m[k] for m in per_rank])) for k in keys}
