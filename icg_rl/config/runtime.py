"""Config sections of how a run executes (docs/architecture.md §8): Ray placement, threads and weight sync per role,
rollout scheduling and the learner's precision and compilation. `icg_rl/config/sections.py` assembles them into the
tree."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from icg_rl.config.files import Section

CompileMode = Literal["off", "regional", "full", "reduce-overhead"]
COMPILE_HELP = ("torch.compile of the denoiser: off; regional (its repeated blocks, diffusers' compile_repeated_"
                "blocks: short compiles); full; reduce-overhead (full + CUDA graphs on GPUs)")


class RayConfig(Section):
    """Cluster placement (docs/architecture.md §8). Per-role `*_cpus` / `*_gpus` override the per-worker defaults."""

    address: str | None = Field(None, description="cluster address; None = RAY_ADDRESS or a new local cluster")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a new local cluster; None = all")
    rollout_workers: int | Literal["auto"] = Field(1, description="rollout actors, or 'auto': as many as the "
                                                   "cluster holds beside the other actors, growing when nodes join "
                                                   "and shrinking when they leave")
    max_rollout_workers: int = Field(8, ge=1, description="upper bound of an 'auto' rollout pool")
    reward_workers: int = Field(1, ge=1, description="actors per reward pool")
    learner_workers: int = Field(1, ge=1, description="learner ranks (DeepSpeed world size)")
    cpus_per_worker: float = Field(0.5, gt=0.0, description="CPUs requested per actor")
    gpus_per_worker: float = Field(0.0, ge=0.0, description="GPUs requested per actor (fractions allowed)")
    rollout_cpus: float | None = Field(None, gt=0.0, description="CPUs per rollout actor; None = cpus_per_worker")
    rollout_gpus: float | None = Field(None, ge=0.0, description="GPUs per rollout actor; None = gpus_per_worker")
    reward_cpus: float | None = Field(None, gt=0.0, description="CPUs per reward actor; None = cpus_per_worker")
    reward_gpus: float | None = Field(None, ge=0.0, description="GPUs per reward actor; None = gpus_per_worker")
    learner_cpus: float | None = Field(None, gt=0.0, description="CPUs per learner rank; None = cpus_per_worker")
    learner_gpus: float | None = Field(None, ge=0.0, description="GPUs per learner rank; None = gpus_per_worker")
    data_cpus: float = Field(1.0, ge=0.0, description="CPUs left free for Ray Data's tasks (the pair stream); "
                             "counted in the fit check, since a packed cluster would stall the stream")
    threads_per_worker: int | None = Field(None, ge=1, description="torch CPU threads of every actor unless its "
                                           "role's *_threads says otherwise; None = fitted to the machine (below)")
    rollout_threads: int | None = Field(None, ge=1, description="torch threads per rollout actor; None = "
                                        "threads_per_worker, else fitted: GPU actors their CPUs; CPU-only ones the "
                                        "node's cores / actors of the role (sync) or half of that (async)")
    learner_threads: int | None = Field(None, ge=1, description="torch threads per learner rank; None = as "
                                        "rollout_threads")
    reward_threads: int | None = Field(None, ge=1, description="torch threads per reward actor; None = "
                                       "threads_per_worker, else 1 (reward models are small next to the denoiser)")
    weight_sync: Literal["object_store", "collective", "cuda_ipc"] = Field(
        "object_store", description="how learner rank 0's weights reach the rollout actors: the object store; a "
        "broadcast in a process group made for it (gloo on CPU, NCCL on GPUs); or CUDA IPC (same GPU)")
    resource_wait_s: float = Field(0.0, ge=0.0, description="seconds to wait for an autoscaler to add what the "
                                   "actors need before failing; 0 = check the cluster as it is")
    max_restarts: int = Field(3, ge=0, description="restarts of a rollout or reward actor (its work is retried)")
    max_learner_restarts: int = Field(3, ge=0, description="times a run rebuilds a lost learner group by itself "
                                      "(a rank's actor, process or node died) from its newest intact checkpoint and "
                                      "redoes the iterations since; then it stops, naming the checkpoint")
    deepspeed_config: str = Field("configs/deepspeed/zero2.json", description="DeepSpeed JSON (ZeRO stage, "
                                  "precision); optimizer, clipping and batch sizes are filled from algo/data")

    @model_validator(mode="after")
    def _fixed_pool_for_group_sync(self):
        if self.weight_sync != "object_store" and self.rollout_workers == "auto":
            raise ValueError(f"ray.weight_sync={self.weight_sync!r} needs a fixed ray.rollout_workers (its group "
                             f"has a fixed membership), got 'auto'; an elastic pool syncs through weight_sync="
                             f"object_store")
        return self

    def threads(self, name: str) -> int | None:
        """Configured torch threads of a role ('rollout', 'learner', 'reward'); None = fit to the machine."""
        configured = getattr(self, f"{name}_threads")
        return configured if configured is not None else self.threads_per_worker

    def role(self, name: str) -> tuple[float, float]:
        """(CPUs, GPUs) per actor of a role: 'rollout', 'reward' or 'learner'."""
        cpus, gpus = getattr(self, f"{name}_cpus"), getattr(self, f"{name}_gpus")
        return (self.cpus_per_worker if cpus is None else cpus, self.gpus_per_worker if gpus is None else gpus)


class RolloutConfig(Section):
    """How rollouts are scheduled against learner updates and how they sample (docs/architecture.md §8)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
    async_: bool = Field(False, alias="async", description="sample iteration t+1 while the learner updates t (one "
                         "step off-policy; PPO ratios use the recorded log-probs); DDPO only")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: sample under autocast (log-probs are "
                                               "computed in fp32 either way)")
    compile: CompileMode = Field("off", description=COMPILE_HELP)


class LearnerConfig(Section):
    """The learner's numerics and compilation (the DDPO/GRPO step and reward backprop; `rl/speed.py`)."""

    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast with fp32 master weights (the "
                                               "trainable parameters and optimizer stay fp32)")
    compile: CompileMode = Field("off", description=COMPILE_HELP)
    gradient_checkpointing: bool = Field(False, description="recompute the denoiser's activations in backward "
                                         "(less memory, ~30% more compute)")
    fused_optimizer: bool = Field(True, description="torch's fused AdamW kernel on CUDA learners (CPU learners "
                                  "keep the loop one, whose float order the in-process trainer shares)")
