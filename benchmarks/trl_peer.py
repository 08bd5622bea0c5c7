"""trl 0.23.1's DDPOTrainer as a benchmark peer (the `bench` extra), used by benchmarks/throughput.py.

Kept apart so the comparison script stays readable: how trl is set up on the world's tiny SD folder, the one
compatibility shim it needs with diffusers >= 0.22 at CFG 1, and the exact error when it cannot run.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import traceback
from pathlib import Path

TRL_NOT_INSTALLED = "trl not installed (pip install -e '.[bench]')"


def short_error(err: BaseException, limit: int = 240) -> str:
    text = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def restore_encode_prompt_contract(sd_pipeline) -> None:
    """The guidance shim: diffusers' `_encode_prompt` (>= 0.22) returns cat(negative, positive) embeddings even
    when CFG is off; before, it concatenated only under CFG, which trl 0.23.1's sampler still assumes. Bound on this
    pipeline instance only."""
    import types

    original = type(sd_pipeline)._encode_prompt

    def _encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance,
                       negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None, lora_scale=None, **kw):
        if do_classifier_free_guidance:
            return original(self, prompt, device, num_images_per_prompt, True, negative_prompt, prompt_embeds,
                            negative_prompt_embeds, lora_scale, **kw)
        return self.encode_prompt(prompt, device, num_images_per_prompt, False, None, prompt_embeds=prompt_embeds,
                                  lora_scale=lora_scale, **kw)[0]

    sd_pipeline._encode_prompt = types.MethodType(_encode_prompt, sd_pipeline)


def run_trl(cfg, args, time_iterations, shim: bool) -> dict:
    """trl's DDPOTrainer on the world's tiny SD, timed with the caller's `time_iterations`; raises TrlUnavailable
    with the exact error when it cannot run."""
    try:
        import trl
    except ImportError as err:
        raise TrlUnavailable(TRL_NOT_INSTALLED) from err
    import numpy as np
    import torch

    from icg_rl.data import load_from_config
    from icg_rl.rewards.registry import build_reward

    torch.set_num_threads(args.threads)
    logdir = tempfile.mkdtemp(prefix="trl-ddpo-")  # accelerate's project folder; nothing is saved there
    try:
        import warnings

        from accelerate import PartialState
        from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

        start = time.perf_counter()
        reward = build_reward("aesthetic", cfg.reward, cfg.world.dir)
        titles = load_from_config(cfg).items["title"].astype(str).tolist()
        rng = np.random.default_rng(cfg.train.seed)
        k = args.samples

        def prompts():  # P distinct titles per batch, each K times in a row: the P × K groups of our trainers
            while True:
                for index in rng.permutation(len(titles)):
                    yield from [titles[index]] * k

        stream = prompts()

        def prompt_fn():
            return next(stream), {}

        def reward_fn(images, prompt_list, metadata):
            with torch.no_grad():
                return reward.score(images.float(), {"title": list(prompt_list)}), {}

        # trl's pipeline warns through accelerate's logger (no LoRA file in the folder) before any Accelerator
        # exists, which raises "You must initialize the accelerate state": create the state first
        PartialState(cpu=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pipe = DefaultDDPOStableDiffusionPipeline(str(Path(cfg.world.dir) / "models" / "sd"),
                                                      use_lora=not args.trl_full_unet)
            if shim:
                restore_encode_prompt_contract(pipe.sd_pipeline)
            rows, algo = args.pairs * args.samples, cfg.algo
            config = DDPOConfig(
                seed=cfg.train.seed, log_with=None, mixed_precision="no", accelerator_kwargs={"cpu": True},
                save_freq=10**9, num_epochs=10**6,
                project_kwargs={"project_dir": logdir, "logging_dir": logdir}, logdir=logdir,
                sample_num_steps=args.steps, sample_eta=algo.eta, sample_guidance_scale=algo.guidance_scale,
                sample_batch_size=rows, sample_num_batches_per_epoch=1,
                train_batch_size=rows, train_gradient_accumulation_steps=1, train_num_inner_epochs=1,
                train_cfg=algo.guidance_scale > 1.0, train_learning_rate=algo.lr, train_clip_range=algo.clip_range,
                train_adv_clip_max=algo.adv_clip, train_max_grad_norm=algo.max_grad_norm,
                train_timestep_fraction=algo.timestep_fraction, per_prompt_stat_tracking=True,
                per_prompt_stat_tracking_buffer_size=16, per_prompt_stat_tracking_min_count=k)
            trainer = DDPOTrainer(config, reward_fn, prompt_fn, pipe)
        pipe.set_progress_bar_config(disable=True)
        setup = time.perf_counter() - start
        trainable = [p for p in pipe.unet.parameters() if p.requires_grad]
        state = {"epoch": 0, "global_step": 0}

        phase_times: dict[str, float] = {}

        def timed(name: str, method):  # measurement only: wraps the bound method, same arguments and result
            def wrapper(*a, **kw):
                start = time.perf_counter()
                try:
                    return method(*a, **kw)
                finally:
                    phase_times[f"time/{name}"] = phase_times.get(f"time/{name}", 0.0) + time.perf_counter() - start
            return wrapper

        trainer._generate_samples = timed("rollout", trainer._generate_samples)
        trainer.compute_rewards = timed("reward", trainer.compute_rewards)
        trainer._train_batched_samples = timed("update", trainer._train_batched_samples)

        def step():
            phase_times.clear()
            state["global_step"] = trainer.step(state["epoch"], state["global_step"])
            state["epoch"] += 1
            return dict(phase_times)

        label = f"trl{' +shim' if shim else ''}"
        result = time_iterations(step, args.warmup, args.iterations, label)
        if state["global_step"] != args.warmup + args.iterations:
            raise RuntimeError(f"trl made {state['global_step']} optimizer steps in "
                               f"{args.warmup + args.iterations} epochs; expected one per epoch")
        return result | {"setup_s": setup, "trl_version": trl.__version__, "lora": pipe.use_lora,
                "trainable_params": sum(p.numel() for p in trainable)}
    except Exception as err:  # noqa: BLE001 - whatever trl raises is the result of this row
        traceback.print_exc()
        raise TrlUnavailable(short_error(err), full=traceback.format_exc()) from err
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


class TrlUnavailable(RuntimeError):
    def __init__(self, message: str, full: str | None = None):
        super().__init__(message)
        self.full = full
