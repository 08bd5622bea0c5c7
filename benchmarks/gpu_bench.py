"""GPU benchmark on an SD1.5-sized model (real SD1.5 config dimensions, random weights): one table.

    python benchmarks/gpu_bench.py [--steps 20] [--batch 8] [--size 512]       # on a CUDA machine
    python benchmarks/gpu_bench.py --device cpu --tiny                         # a dry run of the code path here

Measures, under bf16 autocast (fp32 master weights, as a learner keeps them):
- rollout: images/s of `rl/sampling.sample_trajectory` (DDIM with per-step log-probs, the ICG adapter active) vs a
  bare diffusers `StableDiffusionPipeline.__call__` on the same UNet/VAE/text weights, same steps and batch;
- learner: one DDPO gradient step (`rl/ddpo.ddpo_gradients`, PPO-clip through every recorded step) — seconds, and
  bf16 MFU from FLOPs counted by `torch.utils.flop_counter` against the card's dense bf16 peak;
- one UNet forward at the resolution, GFLOP (the issue quotes ~803 GFLOP for SD1.5 at 512 px, batch 1 with CFG's
  pair counted as 2 — we print batch 1, no CFG);
- the same rollout and learner step again with `rl/speed.prepare_denoiser` (issue 21): the rollout's UNet compiled
  with CUDA graphs (`--rollout-compile`, default reduce-overhead), the learner's with regional compilation of the
  repeated transformer blocks (`--learner-compile`, default regional); `off` skips a row. Each on its own pipeline
  (built from the same folder and seed), so the eager rows are untouched;
- weight sync: the adapter's trainable parameters GPU → CPU numpy (what the object store ships) and back, ms; and
  `ray.weight_sync=cuda_ipc`'s path (distributed/weight_sync.py's FlatWeights: pack into one flat buffer, a second
  process on the same GPU copies it through a CUDA IPC handle) for the trainable parameters and for a 79 MB buffer
  (the issue's size), ms per round trip. NCCL's broadcast needs one GPU per rank, so it is not measured on one card.
The text tokenizer and the MLLM are CoverWorld's tiny ones (carried from artifacts/coverworld/models); the UNet,
VAE and text encoder have SD1.5's dimensions.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def sd15_folder(root: Path, tokenizer_dir: Path, tiny: bool) -> Path:
    """A StableDiffusionPipeline folder with SD1.5's dimensions (or tiny ones for a CPU dry run), random weights."""
    torch.manual_seed(0)
    blocks = (32, 64, 64, 64) if tiny else (320, 640, 1280, 1280)
    unet = UNet2DConditionModel(sample_size=8 if tiny else 64, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=blocks, cross_attention_dim=64 if tiny else 768,
                                attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2 if not tiny else 1,
                        block_out_channels=(32, 32, 64, 64) if tiny else (128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=64 if tiny else 512, norm_num_groups=32)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=64 if tiny else 768,
                                        num_hidden_layers=2 if tiny else 12, num_attention_heads=4 if tiny else 12,
                                        intermediate_size=128 if tiny else 3072,
                                        max_position_embeddings=tokenizer.model_max_length,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae, text, tokenizer, unet, scheduler, None, None, requires_safety_checker=False)
    folder = root / "sd15"
    pipe.save_pretrained(folder)
    return folder


def timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up (kernel selection, caches)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def ipc_receiver(handles, go, done) -> None:
    """A second process on the GPU (a rollout actor's part of cuda_ipc): opens the sender's buffer once, then copies
    it into its own on every `go`."""
    rebuild, args = handles.get()
    shared = rebuild(*args)
    local = torch.empty_like(shared)
    while go.get():
        local.copy_(shared)
        torch.cuda.synchronize()
        done.put(True)
    done.put(True)


def cuda_ipc_ms(flat, repeats: int) -> float:
    """ms per sync through CUDA IPC: pack (learner) + the receiver's copy, with the round trip that triggers it."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.reductions import reduce_tensor

    context = mp.get_context("spawn")
    handles, go, done = context.Queue(), context.Queue(), context.Queue()
    receiver = context.Process(target=ipc_receiver, args=(handles, go, done), daemon=True)
    receiver.start()
    try:
        handles.put(reduce_tensor(flat.pack()))

        def sync():
            flat.pack()
            torch.cuda.synchronize()
            go.put(True)
            done.get(timeout=60)

        return timed(sync, "cuda", repeats) * 1e3
    finally:
        go.put(False)
        done.get(timeout=60)
        receiver.join(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny dimensions (CPU dry run of the code path)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="artifacts/coverworld/models", help="folder with sd/tokenizer and mllm")
    parser.add_argument("--rollout-compile", default="reduce-overhead", choices=("off", "regional", "full",
                                                                                  "reduce-overhead"))
    parser.add_argument("--learner-compile", default="regional", choices=("off", "regional", "full"))
    args = parser.parse_args()

    from icg_rl.config import AlgoConfig
    from icg_rl.models.pipeline import ICGPipeline
    from icg_rl.models.trainable import load_trainable_arrays, nbytes, trainable_arrays
    from icg_rl.rl.ddpo import ddpo_gradients
    from icg_rl.rl.sampling import predict_noise, sample_trajectory
    from icg_rl.rl.speed import prepare_denoiser

    device, dtype = args.device, torch.bfloat16
    root = Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    rows: list[tuple[str, str]] = []
    try:
        folder = sd15_folder(root, Path(args.models) / "sd" / "tokenizer", args.tiny)

        def icg_pipeline(compile_mode: str = "off"):
            torch.manual_seed(1)  # the same ICG initialisation for every copy
            icg = ICGPipeline.from_pretrained(folder, mllm_path=Path(args.models) / "mllm", meta_tokens=4,
                                              user_ids=["u1"]).to(device)
            with torch.no_grad():
                icg.icg.adapter.projection.gate.fill_(1.0)  # the adapter does real work
            icg.set_progress_bar_config(disable=True)
            prepare_denoiser(icg, compile_mode)
            return icg

        pipe = icg_pipeline()
        bare = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None,
                                                       requires_safety_checker=False).to(device)
        bare.set_progress_bar_config(disable=True)
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
        unet_params = sum(p.numel() for p in pipe.unet.parameters())
        rows.append(("device", name))
        rows.append(("UNet parameters (incl. ICG adapter layers)", f"{unet_params / 1e6:.1f} M"))
        b = args.batch
        titles = [f"Cover title number {i}" for i in range(b)]
        batch = {"title": np.array(titles), "reference_image": np.zeros((b, 32, 32, 3), np.uint8),
                 "has_reference": np.zeros(b, bool), "user_id": np.array(["u1"] * b),
                 "history": np.array([[""]] * b), "group_key": np.array([str(i) for i in range(b)])}
        autocast = torch.autocast(device_type=device, dtype=dtype)

        def rollout(on=pipe):
            generators = [torch.Generator().manual_seed(i) for i in range(b)]  # CPU generators, as rl/seeding.py
            with autocast:
                return sample_trajectory(on, batch, args.steps, 1.0, 1.0, generators)

        def bare_call():
            with autocast, torch.no_grad():
                bare(titles, num_inference_steps=args.steps, guidance_scale=1.0, eta=1.0, output_type="pt",
                     generator=[torch.Generator().manual_seed(i) for i in range(b)])

        t_roll, t_bare = timed(rollout, device, args.repeats), timed(bare_call, device, args.repeats)
        rows += [(f"rollout images/s (ICG + log-probs, {args.steps} steps, batch {b}, {size} px)", f"{b / t_roll:.2f}"),
                 ("bare diffusers pipeline images/s (same)", f"{b / t_bare:.2f}"),
                 ("rollout / bare", f"{t_bare / t_roll:.2f}×")]
        if args.rollout_compile != "off":
            compiled = icg_pipeline(args.rollout_compile)
            started = time.perf_counter()
            rollout(compiled)  # compilation (and CUDA graph capture) happens here, outside the timing
            compile_s = time.perf_counter() - started
            t_fast = timed(lambda: rollout(compiled), device, args.repeats)
            rows += [(f"rollout images/s, compile={args.rollout_compile} (compiled in {compile_s:.0f} s)",
                      f"{b / t_fast:.2f}"), ("compiled rollout / bare (goal ≥ 1.2×)", f"{t_bare / t_fast:.2f}×")]
            del compiled

        trajectory, _ = rollout()
        algo = AlgoConfig(name="ddpo", num_inference_steps=args.steps, eta=1.0, guidance_scale=1.0,
                          timestep_fraction=1.0)
        advantages = torch.randn(b, device=device)

        def learner_step(on=pipe):
            with autocast:
                grads, _ = ddpo_gradients(on, trajectory, advantages, algo, torch.Generator().manual_seed(0))
            return grads

        t_learn = timed(learner_step, device, max(1, args.repeats - 1))
        with FlopCounterMode(display=False) as counter:
            learner_step()
        learn_flops = counter.get_total_flops()
        latents = trajectory.latents[:1, 0].to(device)
        with torch.no_grad():
            features = pipe.encode_condition_inputs({k: v[:1] for k, v in trajectory.condition.items()}).detach()
        with torch.no_grad(), autocast, FlopCounterMode(display=False) as counter:
            predict_noise(pipe, latents, trajectory.timesteps[0], trajectory.rows(slice(0, 1)).text, features, 1.0)
        forward_gflop = counter.get_total_flops() / 1e9
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        mfu = learn_flops / t_learn / (peak * 1e12) if peak else float("nan")
        rows += [(f"learner DDPO step ({args.steps} timesteps × batch {b}, fwd+bwd)", f"{t_learn:.3f} s"),
                 ("learner step TFLOP (counted)", f"{learn_flops / 1e12:.2f}"),
                 (f"learner bf16 MFU (vs {peak} TFLOP/s dense peak)" if peak else "learner bf16 MFU",
                  f"{mfu:.1%}" if peak else "n/a (unknown card)"),
                 (f"UNet forward, batch 1, {size} px (GFLOP)", f"{forward_gflop:.0f}")]
        if args.learner_compile != "off":
            compiled = icg_pipeline(args.learner_compile)
            started = time.perf_counter()
            learner_step(compiled)
            compile_s = time.perf_counter() - started
            t_fast = timed(lambda: learner_step(compiled), device, max(1, args.repeats - 1))
            rows += [(f"learner DDPO step, compile={args.learner_compile} (compiled in {compile_s:.0f} s)",
                      f"{t_fast:.3f} s"),
                     ("compiled learner bf16 MFU (goal ≥ 35 %)",
                      f"{learn_flops / t_fast / (peak * 1e12):.1%}" if peak else "n/a (unknown card)")]
            del compiled

        arrays = trainable_arrays(pipe)

        def sync():
            load_trainable_arrays(pipe, trainable_arrays(pipe))

        t_sync = timed(sync, device, args.repeats)
        rows += [("weight sync: trainable parameters", f"{nbytes(arrays) / 1e6:.2f} MB"),
                 ("weight sync: GPU → numpy → GPU", f"{t_sync * 1e3:.1f} ms")]
        if device == "cuda":
            from icg_rl.distributed.weight_sync import FlatWeights

            flat = FlatWeights(pipe.trainable_named_parameters(), pipe.device)
            rows.append(("weight sync, cuda_ipc: trainable parameters", f"{cuda_ipc_ms(flat, args.repeats):.1f} ms"))
            big = {"w": torch.nn.Parameter(torch.zeros(79_000_000 // 4, device=device))}
            rows.append(("weight sync, cuda_ipc: 79 MB (goal ≤ 50 ms)",
                         f"{cuda_ipc_ms(FlatWeights(big, pipe.device), args.repeats):.1f} ms"))
        if device == "cuda":
            rows.append(("peak GPU memory", f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        print("\n| measurement | value |\n|---|---|")
        for key, value in rows:
            print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
