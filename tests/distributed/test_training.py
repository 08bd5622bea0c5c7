"""The Ray trainer (commands/train.py + distributed/) on the micro world and the shared local cluster: it takes the
in-process reference trainer's first step, 2 learner ranks take the 1-rank step, the command writes what it
promises, and a run that cannot fit fails at once instead of hanging."""

import gc
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from icg_rl.config import load_config
from tests.conftest import MICRO_CONFIG
from tests.float_noise import assert_within_floor, spread

FAST = ["algo.num_inference_steps=4", "data.pairs_per_batch=2", "data.samples_per_pair=4", "model.meta_tokens=2",
        "reward.weights={aesthetic: 1.0, clip_t: 0.5}", "algo.lr=0.05", "algo.clip_range=0.5", "train.tracker=none"]


def micro(micro_world, *overrides):
    cfg, _ = micro_world
    return load_config(MICRO_CONFIG, [f"world.dir={cfg.world.dir}", *FAST, *overrides])


def trainable(pipe) -> dict[str, np.ndarray]:
    from icg_rl.models.trainable import trainable_arrays

    return trainable_arrays(pipe)


def local_first_step(cfg, threads: int) -> tuple[dict, dict, dict]:
    """The in-process reference's first iteration with `threads` torch threads: (metrics, initial, updated)."""
    from icg_rl.rl.local import LocalTrainer

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        local = LocalTrainer(cfg)
        initial = trainable(local.pipe)
        return local.step(), initial, trainable(local.pipe)
    finally:
        torch.set_num_threads(before)


# reward backprop runs split (rollout actors: the first T − K steps; the learner: the last K), the reference in one
# process; DDPO samples on the rollout actors and updates in the learner
ALGOS = {"ddpo": ([], ("loss/policy", "stats/clip_fraction")),
         "backprop": (["algo.name=backprop", "algo.backprop_steps=2"], ("loss/backprop",)),
         # nft: rollouts ship clean latents only, two inner steps against the frozen sampling outputs, plus the
         # learned critic (rl/critic.py): every rank fits it on the whole batch and climbs it on its own rows; its
         # user term an ideal look, and each cover paying the relevance floor on its model of CLIP-T (floor_model.py)
         "nft": (["algo.name=nft", "algo.eta=0.0", "algo.nft_inner_steps=2", "algo.nft_critic_weight=1.0",
                  "algo.nft_critic_warmup=0", "algo.nft_critic_user_form=ideal", "reward.floors={clip_t: 0.95}",
                  "algo.nft_critic_floor_weight=1.0"],
                 ("loss/nft", "stats/denoise_mse", "critic/policy_score", "critic/fit_mse",
                  "critic/policy_shortfall")),
         # …and each cover shown to the other group's user, scored for them by the preference pool (rl/relabel.py);
         # the critic fits those scores too and is climbed through the sampler's last 2 steps (rollouts ship x₂ … x₀);
         # its user term in the preference model's shape (rl/critic_tower.py), as configs/coverworld_nft.yaml ships it
         "nft_shown": (["algo.name=nft", "algo.eta=0.0", "algo.nft_relabel_users=1", "algo.nft_critic_weight=1.0",
                        "algo.nft_critic_warmup=0", "algo.nft_critic_shown=1", "algo.nft_critic_steps=2",
                        "algo.nft_critic_user_form=tower",
                        "reward.weights={aesthetic: 1.0, clip_t: 0.5, preference: 1.0}"],
                       ("loss/nft", "stats/relabel_abs_advantage", "critic/policy_score", "critic/fit_mse"))}


@pytest.mark.float_sensitive
@pytest.mark.parametrize("algo", list(ALGOS))
def test_first_iteration_equals_the_local_trainer(micro_world, ray_cluster, tmp_path, algo, request):
    from icg_rl.commands.train import RayTrainer

    overrides, loss_keys = ALGOS[algo]
    if any("preference" in o for o in overrides):
        request.getfixturevalue("micro_preference")  # trained once per session, where the reward finds it
    cfg = micro(micro_world, *overrides)
    # The reference three times, with 1, 2 and 3 torch threads: the same algorithm in three summation orders. Their
    # spread is this step's float noise floor here (rollout images are uint8, so a last-bit change can flip a pixel
    # level and move a reward by ~1e-5 relative); the Ray step, split over actors with their own thread counts, is
    # one more order and must land within a few spreads (tests/float_noise.py).
    runs = [local_first_step(cfg, threads) for threads in (1, 2, 3)]
    ray_trainer = RayTrainer(cfg)
    try:
        got = ray_trainer.step()
        ray_weights, _ = ray_cluster.get(ray_trainer.learner.actors[0].weights.remote())
    finally:
        ray_trainer.shutdown()
    # Ray Data's batch readers are gone when shutdown returns: one left inside ray.get when ray.shutdown() lands
    # ends the process with exit code 1 (data/stream.py: join_reader_threads)
    assert [t.name for t in threading.enumerate() if t.name == "iter_threaded"] == []
    for key in ("reward/aesthetic", "reward/clip_t", "reward/total", *loss_keys):
        assert_within_floor(got[key], [metrics[key] for metrics, _, _ in runs], key)
    if algo == "backprop":  # the reward pools scored the covers the learner made: the learner's own scores
        assert got["time/rollout"] > 0 and got["time/reward"] > 0
        for name in ("aesthetic", "clip_t"):
            assert got[f"pool/{name}"] == pytest.approx(got[f"reward/{name}"], rel=0.02, abs=0.005)
    _, initial, updated = runs[0]
    assert sum(not np.array_equal(updated[n], initial[n]) for n in initial) > len(initial) // 2  # a real update
    for name in initial:
        assert_within_floor(ray_weights[name], [weights[name] for _, _, weights in runs], name)
    assert got["sync/bytes"] == sum(v.nbytes for v in ray_weights.values()) and got["sync/version"] == 1


@pytest.mark.float_sensitive
def test_two_learner_ranks_take_the_one_rank_step(micro_world, ray_cluster):
    from icg_rl.distributed.learner import LearnerGroup
    from icg_rl.rl.local import LocalTrainer
    from icg_rl.rl.sampling import sample_trajectory

    cfg = micro(micro_world)
    local = LocalTrainer(cfg)
    with torch.no_grad():
        for p in local.pipe.trainable_parameters():  # start away from the zero gate: every parameter moves
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    start = trainable(local.pipe)
    batch = next(local._batches)
    trajectory, _ = sample_trajectory(local.pipe, batch, 4, 1.0, 1.0, torch.Generator().manual_seed(0))
    advantages = np.linspace(-1.5, 1.5, len(trajectory)).astype(np.float32)
    users, features = [str(u) for u in local.pipe.icg.user_encoder.user_ids], local.pipe.icg.feature_table()
    features = {k: v.numpy() for k, v in features.items()}
    # 1 rank on the batch, 1 rank on the same rows in two other orders (the loss is a mean over rows, so only the
    # summation order changes: the noise floor), then 2 ranks, whose difference is where the two shards' gradients
    # are summed (gloo all-reduce). Adam's first step is ≈ lr·g/|g| per element, which amplifies rounding where g is
    # tiny — in every variant alike, so the floor measures that too.
    orders = {"one rank": np.arange(len(trajectory)), "one rank, reversed": np.arange(len(trajectory))[::-1],
              "one rank, rolled": np.roll(np.arange(len(trajectory)), 3), "two ranks": np.arange(len(trajectory))}
    after = {}
    for label, order in orders.items():
        group = LearnerGroup(cfg, users, features, num_workers=2 if label == "two ranks" else 1, num_cpus=0.25,
                             threads=1, initial_weights=start)
        try:
            metrics = group.update_ddpo(trajectory.rows(order), advantages[order], iteration=0)
            after[label] = ray_cluster.get(group.actors[-1].weights.remote())[0]  # the last rank: all agree
        finally:
            group.shutdown()
        assert np.isfinite(metrics["loss/policy"]) and metrics["stats/grad_norm"] > 0
    moved = [n for n in start if not np.allclose(after["one rank"][n], start[n])]
    assert len(moved) > len(start) // 2, "the update barely moved anything: the comparison would be vacuous"
    references = [after[label] for label in orders if label != "two ranks"]
    # Adam's first step is lr·g/(|g| + eps) per element: where a gradient element cancels to about eps or less, the
    # all-reduce's other rounding of g moves that element's step by a sizeable part of lr (seen: 1.8e-3 at lr 0.05
    # on one machine whose three single-rank orders happened to agree there). A wrong reduction (a shard dropped or
    # counted twice) changes g's sign or size in most elements, moving them by ~lr; so the bulk must sit within the
    # floor and at most 1 % of elements (the ill-conditioned ones) may leave it.
    lr = cfg.algo.lr
    for name in start:
        refs = [r[name] for r in references]
        error = np.abs(after["two ranks"][name] - np.mean(refs, axis=0))
        outside = float(np.mean(error > 1e-3 * lr + 10 * spread(refs)))
        assert outside <= 0.01, f"{name}: {outside:.1%} of elements off (largest {error.max():.3g})"
        assert np.median(error) <= 10 * spread(refs) + 1e-6 * lr, f"{name}: median error {np.median(error):.3g}"


def test_rollout_actor_refuses_stale_weights(micro_world):
    from icg_rl.distributed.rollout import RolloutWorker
    from icg_rl.distributed.weights import StaleWeightsError

    cfg = micro(micro_world)
    worker = RolloutWorker(cfg, ["u1"], {"i1": np.zeros(8, np.float32)}, threads=None)
    arrays = trainable(worker.pipe)
    worker.set_weights(0, arrays)
    worker.set_weights(3, arrays)
    with pytest.raises(StaleWeightsError, match="version 2 is not newer than the held version 3"):
        worker.set_weights(2, arrays)
    with pytest.raises(StaleWeightsError, match="asked for weights version 4, this actor holds 3"):
        worker.sample({"group_key": np.array(["u1|i1"])}, 0, 0, version=4)
    name = next(iter(arrays))
    with pytest.raises(ValueError, match=f"{name} has shape"):
        worker.set_weights(5, arrays | {name: np.zeros((7, 7), np.float32)})


def test_a_run_that_cannot_fit_fails_at_once(micro_world, ray_cluster, tmp_path):
    from icg_rl.commands.train import RayTrainer
    from icg_rl.distributed.placement import ResourceShortfall

    cfg = micro(micro_world, "ray.rollout_workers=64", "ray.learner_gpus=1")
    with pytest.raises(ResourceShortfall, match=r"exceed the cluster by 15\.5 CPU and 1 GPU.*rollout: 64 ×"):
        RayTrainer(cfg)
    assert not ray_cluster.util.placement_group_table() or all(
        pg["state"] == "REMOVED" for pg in ray_cluster.util.placement_group_table().values())


@pytest.mark.slow
def test_train_command_writes_weights_grids_curves_and_summary(micro_world, micro_preference, ray_cluster,
                                                                tmp_path):
    from PIL import Image

    from icg_rl.commands.train import main
    from icg_rl.models.pipeline import ICGPipeline

    cfg, _ = micro_world
    out = tmp_path / "run"
    code = main(["--config", str(MICRO_CONFIG), "--out", str(out), f"world.dir={cfg.world.dir}", "algo.name=backprop",
                 "algo.num_inference_steps=4", "train.iterations=3", "train.eval_every=2", "train.eval_pairs=8",
                 "train.final_eval_pairs=12", "train.tracker=wandb"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 3 and summary["samples_per_s"] > 0
    oracle = summary["oracle"]
    assert set(oracle) >= {"ctr_icg", "ctr_reference", "ctr_best_variant", "ctr_user_zeroed", "relevance_icg",
                           "relevance_reference", "ctr_icg_initial", "ab_p_value", "ab_lift",
                           "taste_corr_brightness", "taste_corr_composition"}
    assert 0 < oracle["ctr_reference"] <= oracle["ctr_best_variant"] <= 1
    assert 0 < oracle["ctr_icg_initial"] < 1 and 0 <= oracle["ab_p_value"] <= 1
    assert oracle["pairs"] == 12  # the end-of-run evaluation's larger batch (the periodic ones score 8)
    pipe = ICGPipeline.from_pretrained(cfg.world.dir + "/models/sd", icg_path=summary["checkpoint"])
    assert float(pipe.icg.adapter.projection.gate.abs()) > 0  # trained weights, not the zero-gate init
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and "reward/preference" in rows[1]
    assert "oracle/ctr_icg" in rows[2] and "loss/backprop" in rows[3]
    with Image.open(out / "rewards.png") as image:
        assert image.size[0] > 100
    from icg_rl.evaluation.sample_grid import grid_size
    from icg_rl.evaluation.showcase import SHOWCASE_ITEMS, SHOWCASE_USERS

    with Image.open(out / "samples.png") as image:  # items × (reference, users of spread taste, zeroed), 128-px cells
        assert image.size[::-1] == grid_size(SHOWCASE_ITEMS, SHOWCASE_USERS, titled=True)
    assert list((out / "wandb").glob("offline-run-*")), "wandb wrote no offline run"


def test_killed_rollout_and_reward_actors_restart_and_the_iteration_is_retried(micro_world, ray_cluster, tmp_path,
                                                                              caplog):
    from icg_rl.commands.train import RayTrainer

    trainer = RayTrainer(micro(micro_world))
    try:
        trainer.step()
        ray_cluster.kill(trainer.rollout.actors[0], no_restart=False)  # what a preempted node does to them
        ray_cluster.kill(trainer.rewards["aesthetic"].actors[0], no_restart=False)
        with caplog.at_level(logging.WARNING, logger="icg_rl.train"):
            metrics = trainer.step()
            after = trainer.step()
    finally:
        trainer.shutdown()
    assert "actor failed" in caplog.text and "retrying the iteration's rollouts and rewards" in caplog.text
    assert metrics["iteration"] == 2 and after["iteration"] == 3
    assert np.isfinite(metrics["reward/aesthetic"]) and after["sync/version"] == 3


def test_reward_backprop_survives_killed_rollout_and_reward_actors(micro_world, ray_cluster, caplog):
    import logging

    from icg_rl.commands.train import RayTrainer

    trainer = RayTrainer(micro(micro_world, "algo.name=backprop", "algo.backprop_steps=2", "train.pool_check_every=1"))
    try:
        trainer.step()
        ray_cluster.kill(trainer.rollout.actors[0], no_restart=False)  # the prefix of the next step is lost
        ray_cluster.kill(trainer.rewards["clip_t"].actors[0], no_restart=False)  # and the pools' check of it
        with caplog.at_level(logging.WARNING, logger="icg_rl.train"):
            metrics = trainer.step()
    finally:
        trainer.shutdown()
    assert "a rollout or reward actor failed" in caplog.text
    assert metrics["iteration"] == 2 and np.isfinite(metrics["loss/backprop"]) and np.isfinite(metrics["pool/clip_t"])


def kill_learner_rank_0_at(monkeypatch, calls_to_kill: set[int]) -> list:
    """SIGKILL learner rank 0's process as update call n (1-based) of the run starts, for n in `calls_to_kill`: the
    kill is real; the patch only picks the moment. Returns the list of calls made."""
    from icg_rl.distributed.learner import LearnerGroup

    original, calls = LearnerGroup.update_ddpo, []

    def update_after_kill(self, *args, **kwargs):
        calls.append(1)
        if len(calls) in calls_to_kill:
            os.kill(self.info[0]["pid"], signal.SIGKILL)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LearnerGroup, "update_ddpo", update_after_kill)
    return calls


LOST_LEARNER_RUN = ["train.iterations=4", "train.checkpoint_every=2", "train.eval_every=100", "train.eval_pairs=4"]


def test_a_lost_learner_rank_is_rebuilt_from_the_checkpoint_and_the_run_ends_as_if_it_never_failed(
        micro_world, ray_cluster, tmp_path, monkeypatch, caplog):
    from icg_rl.commands.train import train
    from icg_rl.distributed.learner import LearnerGroup

    cfg = micro(micro_world, *LOST_LEARNER_RUN)
    undisturbed = train(cfg, tmp_path / "undisturbed")
    calls = kill_learner_rank_0_at(monkeypatch, {4})  # iteration 4: the checkpoint at 2 is the newest
    load_state, restores = LearnerGroup.load_state, []

    def dies_while_restoring(self, files):  # …and the group rebuilt for it loses its rank too, once, mid-restore
        restores.append(1)
        if len(restores) == 1:
            os.kill(self.info[0]["pid"], signal.SIGKILL)
        return load_state(self, files)

    monkeypatch.setattr(LearnerGroup, "load_state", dies_while_restoring)
    with caplog.at_level(logging.WARNING, logger="icg_rl.train"):
        recovered = train(cfg, tmp_path / "recovered")
    assert "a learner rank died at iteration 4" in caplog.text and "iter_000002" in caplog.text
    assert "(restart 2 of 3)" in caplog.text and len(restores) == 2  # the second rebuild restored
    assert "back at iteration 2, redoing 1 iteration(s)" in caplog.text
    assert recovered["learner_restarts"] == 2 and recovered["iterations"] == 4 and len(calls) == 6
    from safetensors.torch import load_file

    weights = sorted(Path(undisturbed["checkpoint"]).glob("*.safetensors"))
    assert weights
    for path in weights:  # the shipped weights, bit for bit (the files' JSON headers may order their keys apart)
        calm, rebuilt = load_file(path), load_file(Path(recovered["checkpoint"]) / path.name)
        assert calm.keys() == rebuilt.keys() and all(torch.equal(calm[k], rebuilt[k]) for k in calm), path.name
    steps = [json.loads(line)["step"] for line in (tmp_path / "recovered" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # the redone iteration is in the curves once


def test_a_learner_lost_more_often_than_allowed_stops_the_run_with_the_checkpoint_and_how_to_resume(
        micro_world, ray_cluster, tmp_path, monkeypatch):
    from icg_rl.commands.train import RunInterrupted, train
    from icg_rl.distributed.checkpoint import CheckpointStore

    kill_learner_rank_0_at(monkeypatch, {3, 4})  # iteration 3, and again when it is redone after the rebuild
    cfg = micro(micro_world, *LOST_LEARNER_RUN, "ray.max_learner_restarts=1")
    with pytest.raises(RunInterrupted, match=r"(?s)iteration 3.*rebuilt 1 time.*checkpoints/iter_000002.*"
                                             r"--resume auto") as stopped:
        train(cfg, tmp_path / "run")
    del stopped  # its traceback holds the run's frames: freed now, while Ray is up, not at the session's end
    gc.collect()
    name, files = CheckpointStore(tmp_path / "run" / "checkpoints").resume("auto")
    assert name == "iter_000002" and "trainer_state.json" in files  # intact and verified


def test_async_rollouts_overlap_the_update_one_step_off_policy(micro_world, ray_cluster, tmp_path):
    from icg_rl.commands.train import RayTrainer
    from icg_rl.config import ConfigError

    with pytest.raises(ConfigError, match=r"rollout.async=true needs a rollout-based algo.name \(ddpo, grpo, nft\), "
                                          r"got 'backprop'"):
        RayTrainer(micro(micro_world, "rollout.async=true", "algo.name=backprop"))
    trainer = RayTrainer(micro(micro_world, "rollout.async=true"))
    try:
        lags = [trainer.step()["stats/policy_lag"] for _ in range(3)]
        state = json.loads(trainer.state_files()["trainer_state.json"])
    finally:
        trainer.shutdown()
    assert lags == [0.0, 1.0, 1.0]  # the first batch has no earlier update to overlap; then one version behind
    assert (state["epoch"], state["batch_in_epoch"]) == (0, 3)  # the drawn-ahead 4th batch is not counted


def test_async_update_starts_while_the_next_rollouts_run(micro_world, ray_cluster):
    """With a floored reward the driver scores the reference covers each iteration; queued behind the next batch's
    scoring (a reward actor runs tasks in order) it used to wait for the next rollouts, serializing the overlap."""
    from icg_rl.commands.train import RayTrainer

    trainer = RayTrainer(micro(micro_world, "rollout.async=true", "reward.floors={clip_t: 0.9}"))
    try:
        started_us = time.time() * 1e6  # the session's timeline holds every earlier test's tasks too
        for _ in range(3):
            trainer.step()
        events = [e for e in ray_cluster.timeline() if e.get("ph") == "X" and e["ts"] >= started_us]
    finally:
        trainer.shutdown()
    samples = sorted((e for e in events if e["name"].endswith("sample")), key=lambda e: e["ts"])
    updates = sorted((e for e in events if e["name"].endswith("ddpo_step")), key=lambda e: e["ts"])
    assert len(updates) == 3 and len(samples) >= 4
    for k, update in enumerate(updates):  # update k trains on rollouts k; rollouts k + 1 run meanwhile
        following = samples[k + 1]
        assert update["ts"] < following["ts"] + following["dur"], f"update {k} waited for rollouts {k + 1}"


def test_the_averaged_policy_is_evaluated_and_exported_while_rollouts_keep_the_live_weights(micro_world, ray_cluster,
                                                                                           tmp_path):
    from icg_rl.commands.train import RayTrainer
    from icg_rl.evaluation.heldout import evaluate_heldout
    from icg_rl.models.pipeline import ICGPipeline
    from icg_rl.models.trainable import trainable_arrays

    cfg = micro(micro_world, "algo.name=backprop", "algo.backprop_steps=2", "train.iterations=4",
                "train.average_last=0.5", "train.eval_pairs=4")
    trainer = RayTrainer(cfg)
    try:
        live = []
        for _ in range(4):
            trainer.step()
            live.append(ray_cluster.get(trainer.learner.weights()[0]))
        averaged = ray_cluster.get(trainer.learner.weights(averaged=True)[0])

        def live_covers():
            return evaluate_heldout(cfg, trainer.rollout, trainer.rewards, trainer.heldout, with_oracle=False)[1]

        before = live_covers()["icg"]
        shipped = trainer.evaluate()[1]["icg"]
        after = live_covers()["icg"]
        folder = trainer.export(tmp_path / "checkpoint")
    finally:
        trainer.shutdown()
    for name, value in averaged.items():  # the mean of the weights after updates 3 and 4, not the last iterate
        np.testing.assert_allclose(value, (live[2][name] + live[3][name]) / 2, rtol=1e-5, atol=1e-7)
    assert any(not np.allclose(averaged[n], live[3][n]) for n in averaged)
    assert not np.array_equal(shipped, before)  # the evaluation sampled the averaged policy...
    np.testing.assert_array_equal(after, before)  # ...and the rollout actors hold the live weights again
    exported = trainable_arrays(ICGPipeline.from_pretrained(cfg.world.dir + "/models/sd", icg_path=str(folder)))
    for name, value in averaged.items():
        np.testing.assert_array_equal(exported[name], value)
