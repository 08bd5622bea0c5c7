"""The learned reward critic (rl/critic.py): group centring, x̂₀ from each scheduler family's output, and a fit
that recovers a planted user-by-looks preference from group-centred advantages alone."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from icg_rl.config import load_config
from icg_rl.models.clip_embedder import CLIPEmbedder
from icg_rl.rl.critic import CoverCritic, centred
from icg_rl.rl.critic_climb import predicted_clean
from icg_rl.rl.nft import noised_and_target

DIM = 12


def tiny_embedder(tmp_path) -> CLIPEmbedder:
    """A random tiny CLIP (no weights matter here: the fit test feeds features directly)."""
    config = CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "vocab_size": 100, "max_position_embeddings": 16},
                        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 16, "patch_size": 8},
                        projection_dim=DIM)
    model = CLIPModel(config)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 16},
                                                                 crop_size={"height": 16, "width": 16}),
                              tokenizer=_tokenizer(tmp_path))
    return CLIPEmbedder(model, processor)


def _tokenizer(tmp_path) -> CLIPTokenizer:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}
    (tmp_path / "vocab.json").write_text(__import__("json").dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))


def grouped_batch(gen: torch.Generator, batch: int):
    """8 (user, item) groups of 4 covers: users [32, D], items [32, 2D] (feature, title), looks φ [32, D], keys."""
    users = torch.randn(8, DIM, generator=gen).repeat_interleave(4, 0)
    items = torch.randn(8, 2 * DIM, generator=gen).repeat_interleave(4, 0)
    looks = torch.randn(32, DIM, generator=gen)
    return users, items, looks, np.repeat([f"b{batch}g{g}" for g in range(8)], 4)


def fitting_critic(tmp_path, gen: torch.Generator, rank: int, **options) -> CoverCritic:
    """A critic that fits briskly (lr 1e-2, 20 steps per batch on a 512-row replay), catalogue drawn from `gen`."""
    return CoverCritic(tiny_embedder(tmp_path), torch.randn(50, DIM, generator=gen), rank=rank, lr=1e-2,
                       replay_rows=512, fit_steps=20, **options)


def test_centred_removes_each_groups_mean():
    values = torch.tensor([1.0, 3.0, 10.0, 20.0, 30.0, 5.0])
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    out = centred(values, groups)
    assert torch.allclose(out, torch.tensor([-1.0, 1.0, -10.0, 0.0, 10.0, 0.0]))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "flow"])
def test_the_predicted_clean_latent_of_the_true_target_is_the_clean_latent(kind):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0) if kind == "flow" else \
        DDIMScheduler(prediction_type=kind)
    scheduler.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 4, 8, 8, generator=gen), torch.randn(5, 4, 8, 8, generator=gen)
    timesteps = scheduler.timesteps[torch.tensor([0, 3, 5, 8, 9])]
    x_t, target = noised_and_target(scheduler, x0, noise, timesteps)
    assert torch.allclose(predicted_clean(scheduler, x_t, target, timesteps), x0, atol=1e-4)


def planted_fit(critic: CoverCritic, gen: torch.Generator, planted, batches: int) -> list[float]:
    """Fit `critic` on `batches` grouped batches whose advantages are `planted(looks, users)`, group-centred in std
    units -> the held-out correlation it reports before each fit."""
    correlations = []
    for batch in range(batches):
        users, items, looks, keys = grouped_batch(gen, batch)
        advantages = centred(planted(looks, users), torch.as_tensor(np.unique(keys, return_inverse=True)[1]))
        correlations.append(critic.observe(looks, users, items, keys, advantages / advantages.std())
                            .get("critic/held_out_corr", 0.0))
    return correlations


def test_the_critic_recovers_a_planted_user_preference_from_group_centred_advantages(tmp_path):
    """Users like looks along their own direction: A = ⟨φ, M u⟩ within (user, item) groups. The critic never sees
    a user's base rate, only which of a group's covers scored higher; held-out batches must be predicted."""
    gen = torch.Generator().manual_seed(0)
    planted = torch.randn(DIM, DIM, generator=gen) / DIM ** 0.5
    critic = fitting_critic(tmp_path, gen, 8)
    correlations = []
    for batch in range(30):
        users, items, looks, keys = grouped_batch(gen, batch)
        reward = ((looks @ planted) * users).sum(-1) + 5 * (users.sum(-1))  # + a per-user rate it must ignore
        groups = torch.as_tensor(np.unique(keys, return_inverse=True)[1])
        advantages = centred(reward, groups)
        advantages = advantages / advantages.std()
        metrics = critic.observe(looks, users, items, keys, advantages)
        correlations.append(metrics.get("critic/held_out_corr", 0.0))
    assert np.mean(correlations[:2]) < 0.5 < 0.75 < np.mean(correlations[-5:])


def test_the_critic_learns_relevance_as_agreement_between_the_cover_and_its_title(tmp_path):
    """CLIP-T-like relevance: A = ⟨φ, title⟩, a full-rank bilinear form that a rank-2 term cannot hold; the
    critic's per-dimension agreement term (`match`) can, and held-out batches must be predicted."""
    gen = torch.Generator().manual_seed(1)
    critic = fitting_critic(tmp_path, gen, 2)
    correlations = []
    for batch in range(30):
        users, items, looks, keys = grouped_batch(gen, batch)
        reward = (looks * items[:, DIM:]).sum(-1)  # agreement with the title half
        advantages = centred(reward, torch.as_tensor(np.unique(keys, return_inverse=True)[1]))
        metrics = critic.observe(looks, users, items, keys, advantages / advantages.std())
        correlations.append(metrics.get("critic/held_out_corr", 0.0))
    assert np.mean(correlations[-5:]) > 0.9


def test_the_critic_is_for_nft_only(tmp_path):
    with pytest.raises(ValueError, match="nft_critic_weight"):
        load_config(None, ["algo.name=grpo", "algo.nft_critic_weight=1.0"])


@pytest.mark.parametrize("form", ["bilinear", "ideal with a floor model", "tower"])
def test_a_critic_restored_from_its_state_continues_exactly(tmp_path, form):
    """What a checkpoint holds (weights, Adam moments, replay, the floor models' score statistics) is all the fit
    depends on: a resumed run's critic takes the next batch exactly as the uninterrupted one."""
    gen = torch.Generator().manual_seed(3)
    embedder = tiny_embedder(tmp_path)
    catalogue = torch.randn(50, DIM, generator=gen)
    batches = [(torch.randn(8, DIM, generator=gen), torch.randn(8, DIM, generator=gen),
                torch.randn(8, 2 * DIM, generator=gen), np.repeat([f"b{b}g0", f"b{b}g1"], 4),
                torch.randn(8, generator=gen), None,
                {"clip_t": (torch.rand(8, generator=gen).numpy(), torch.rand(8, generator=gen).numpy())})
               for b in range(3)]
    options = {"bilinear": {}, "tower": {"user_form": "tower"}}.get(form, {"user_form": "ideal",
                                                                          "floors": {"clip_t": 0.95}})
    straight = CoverCritic(embedder, catalogue, rank=4, fit_steps=5, **options)
    for batch in batches[:2]:
        straight.observe(*batch)
    resumed = CoverCritic(embedder, catalogue, rank=4, fit_steps=5, seed=1, **options)  # the state must win
    resumed.load_state_bytes(straight.state_bytes())
    assert not any(name.startswith("embedder.") for name in torch.load(
        __import__("io").BytesIO(straight.state_bytes()), weights_only=True)["model"])  # CLIP is not saved
    for critic in (straight, resumed):
        critic.observe(*batches[2])
    restored = dict(resumed.named_parameters()) | dict(resumed.named_buffers())
    for name, value in [*straight.named_parameters(), *straight.named_buffers()]:
        assert torch.equal(value, restored[name]), name


def sampler_path_batch(micro_world, *overrides):
    """A micro-world nft trainer whose critic is climbed through the sampler's last 2 steps, its ICG path live, and
    one rollout of its first batch -> (trainer, rollout batch, the same rollout with every step kept)."""
    from icg_rl.rl.sampling import kept_steps, rollout_window, sample_trajectory
    from icg_rl.rl.seeding import row_generators
    from tests.rl.test_local_trainer import trainer_for

    trainer = trainer_for(micro_world, "algo.name=nft", "algo.eta=0.0", "algo.nft_critic_weight=1.0",
                          "algo.nft_critic_steps=2", *overrides)
    pipe, algo = trainer.pipe, trainer.cfg.algo
    with torch.no_grad():
        pipe.icg.adapter.projection.gate.fill_(0.5)  # the ICG path is live
    batch = next(trainer._batches)

    def rollout(keep):
        noise = row_generators(0, 0, range(len(batch["group_key"])))
        return sample_trajectory(pipe, batch, algo.num_inference_steps, 0.0, 1.0, noise, keep_steps=keep,
                                 sde_window=rollout_window(algo))[0]

    return trainer, rollout(kept_steps(algo)), rollout(None)


def fitted_critic(trainer, tail):
    """The run's critic after three fits on the rollout's covers (at init its personal term is random, nonzero too)."""
    from icg_rl.rl.critic import build_critic, cover_features

    critic = build_critic(trainer.cfg, trainer.pipe)
    image, user, item = cover_features(trainer.pipe, tail, critic)
    for _ in range(3):
        critic.observe(image, user, item, tail.group_key,
                       torch.randn(len(tail.group_key), generator=torch.Generator().manual_seed(0)))
    return critic


def test_the_critics_sampler_path_replays_the_rollouts_last_steps_and_reaches_the_user(micro_world):
    """`algo.nft_critic_steps=K`: a rollout ships the tail x_K … x₀ of its chain; the learner's replay of the last K
    deterministic steps from x_K with the sampling weights is the rollout's cover, and the critic's gradient through
    them reaches the user path (what the one-step x̂₀ path let the policy exploit, this path cannot)."""
    from icg_rl.rl.backprop import denoise_suffix
    from icg_rl.rl.critic import condition_vectors
    from icg_rl.rl.critic_climb import critic_gradients
    from icg_rl.rl.sampling import decode, kept_steps

    trainer, tail, whole = sampler_path_batch(micro_world)
    pipe, algo = trainer.pipe, trainer.cfg.algo
    assert kept_steps(algo) == 2 and tail.latents.shape[1] == 3 and tail.log_probs.shape[1] == 2
    assert torch.equal(tail.latents, whole.latents[:, -3:]) and torch.equal(tail.timesteps, whole.timesteps[-2:])
    prefix = {"latents": tail.latents[:, 0], "condition": tail.condition, "k": 2,
              "prompt_embeds": tail.prompt_embeds, "pooled_embeds": tail.pooled_embeds}
    with torch.no_grad():
        replayed = denoise_suffix(pipe, prefix, algo, None)
        assert torch.allclose(replayed, decode(pipe, tail.latents[:, -1]), atol=1e-5)

    critic = fitted_critic(trainer, tail)
    grads, metrics = critic_gradients(pipe, tail, critic, *condition_vectors(pipe, tail, critic), 1.0, algo,
                                      torch.Generator().manual_seed(0))
    named = dict(zip(pipe.trainable_named_parameters(), grads))
    user_path = [g for n, g in named.items() if "user" in n and g is not None]
    assert user_path and any(float(g.abs().sum()) > 0 for g in user_path), sorted(named)
    assert np.isfinite(metrics["critic/policy_score"])


def test_the_user_term_can_be_climbed_on_one_step_while_the_rest_takes_the_sampler_path(micro_world):
    """`algo.nft_critic_user_one_step`: the critic's user term (γ-weighted) is climbed on one-step x̂₀ covers and
    everything else through the sampler's last K steps, so the split's gradient is the K-step path's gradient
    without the user term plus the one-step path's gradient of γ × the user term alone (same noise draws)."""
    from icg_rl.rl.critic import condition_vectors
    from icg_rl.rl.critic_climb import critic_gradients

    trainer, tail, _ = sampler_path_batch(micro_world, "algo.nft_critic_user_one_step=true",
                                          "algo.nft_critic_user_weight=2.0")
    pipe, algo = trainer.pipe, trainer.cfg.algo
    critic = fitted_critic(trainer, tail)

    def gradients(**update):
        grads, _ = critic_gradients(pipe, tail, critic, *condition_vectors(pipe, tail, critic), 1.0,
                                    algo.model_copy(update=update), torch.Generator().manual_seed(0))
        return [torch.zeros(()) if g is None else g for g in grads]

    split = gradients()
    rest_on_k_steps = gradients(nft_critic_user_one_step=False, nft_critic_user_weight=0.0)
    one_step = gradients(nft_critic_steps=0)
    one_step_without_user = gradients(nft_critic_steps=0, nft_critic_user_weight=0.0)
    user_alone = [a - b for a, b in zip(one_step, one_step_without_user)]
    assert any(float(g.abs().sum()) > 0 for g in user_alone)  # the user term moves the policy on its own
    for got, k_steps, user in zip(split, rest_on_k_steps, user_alone):
        assert torch.allclose(got, k_steps + user, atol=1e-6, rtol=1e-4)


def test_the_population_weight_leaves_the_looks_every_user_likes_out_of_the_climb(micro_world):
    """`algo.nft_critic_population_weight=0`: the policy climbs the critic's item and user terms only; its looks that
    every user likes (the quality term) no longer move the gradient, which they do at weight 1."""
    from icg_rl.rl.critic import condition_vectors
    from icg_rl.rl.critic_climb import critic_gradients

    trainer, tail, _ = sampler_path_batch(micro_world)
    pipe, algo = trainer.pipe, trainer.cfg.algo
    critic = fitted_critic(trainer, tail)

    def gradients(population_weight: float, quality_scale: float):
        with torch.no_grad():
            critic.quality.mul_(quality_scale)
        grads, _ = critic_gradients(pipe, tail, critic, *condition_vectors(pipe, tail, critic), 1.0,
                                    algo.model_copy(update={"nft_critic_population_weight": population_weight}),
                                    torch.Generator().manual_seed(0))
        return torch.cat([g.flatten() for g in grads if g is not None])

    assert not torch.allclose(gradients(1.0, 1.0), gradients(1.0, 5.0))  # quality ×5: the climb moves
    assert torch.allclose(gradients(0.0, 1.0), gradients(0.0, 3.0), atol=1e-7)  # ×15: it does not


def test_shown_differences_are_the_partners_mix_minus_the_own_in_advantage_units():
    """A cover scored for another user of the batch: only the user-dependent rewards change (clip_t is the same
    cover's), and the difference is in the batch advantages' units (over the std of the batch's mixed reward)."""
    from types import SimpleNamespace

    from icg_rl.rewards.mix import RewardMixer
    from icg_rl.rl.critic import shown_differences

    users = np.repeat([f"u{k}" for k in range(4)], 2)
    taste = {f"u{k}": float(k) for k in range(4)}
    looks = np.linspace(0.0, 1.0, 8)
    batch = SimpleNamespace(group_key=np.char.add(users, "|item"), images=looks,
                            extra={"user_id": users, "history": np.arange(8)})

    def score_shown(images, inputs, names):
        assert names == ["preference"]  # clip_t does not depend on the user: never rescored
        return {"preference": np.array([taste[u] for u in inputs["user_id"]]) * images}

    mixer = RewardMixer({"preference": 2.0, "clip_t": 1.0}, normalize=False)
    scores = {"preference": torch.as_tensor(score_shown(looks, batch.extra, ["preference"])["preference"]),
              "clip_t": torch.as_tensor(1.0 - looks)}
    total, _ = mixer(scores)
    own, partner, difference = shown_differences(batch, scores, mixer, {}, score_shown, 2, seed=0, iteration=3)
    assert len(own) == len(partner) == len(difference) == 16 and (users[partner] != users[own]).all()
    expected = 2.0 * (np.array([taste[users[p]] for p in partner]) - np.array([taste[users[o]] for o in own])) \
        * looks[own] / float(total.std(unbiased=False))
    np.testing.assert_allclose(difference, expected, rtol=1e-5, atol=1e-6)


def test_the_critic_learns_the_user_term_from_covers_shown_to_other_users(tmp_path):
    """The advantages say nothing (noise), but each cover scored for another user says how much more that user likes
    it: ⟨φ, M (u′ − u)⟩. The critic's user term must learn M's part from those differences alone."""
    gen = torch.Generator().manual_seed(2)
    planted = torch.randn(DIM, DIM, generator=gen) / DIM ** 0.5
    critic = fitting_critic(tmp_path, gen, 8)
    correlations = []
    for batch in range(30):
        users, items, looks, keys = grouped_batch(gen, batch)
        own = np.arange(32)
        partner = (own + 4 * (1 + np.arange(32) % 7)) % 32  # a row of another group
        difference = ((looks[own] @ planted) * (users[partner] - users[own])).sum(-1)
        metrics = critic.observe(looks, users, items, keys, torch.randn(32, generator=gen),
                                 (own, partner, difference.numpy()))
        correlations.append(metrics.get("critic/held_out_user_corr", 0.0))
    assert np.mean(correlations[:2]) < 0.5 < 0.8 < np.mean(correlations[-5:])


@pytest.mark.parametrize("form", ["bilinear", "ideal_offset"])
def test_the_user_weight_scales_the_user_term_alone(tmp_path, form):
    """`algo.nft_critic_user_weight` γ: the policy climbs quality + relevance + γ · the user term; with the user
    zeroed (the user term is 0) the score is the same for every γ, and the difference it makes is linear in γ.
    `ideal_offset`: the ideal look's part every user shares (−½‖Pφ‖²) stays at weight 1."""
    gen = torch.Generator().manual_seed(4)
    critic = CoverCritic(tiny_embedder(tmp_path), torch.randn(50, DIM, generator=gen), rank=4, user_form=form)
    with torch.no_grad():
        for p in critic.parameters():
            p.normal_(generator=gen)
    image, user, item = torch.randn(6, DIM, generator=gen), torch.randn(6, DIM, generator=gen), \
        torch.randn(6, 2 * DIM, generator=gen)
    nobody = torch.zeros_like(user)
    assert torch.allclose(critic(image, nobody, item, 3.0), critic(image, nobody, item))
    one, three = critic(image, user, item) - critic(image, nobody, item), \
        critic(image, user, item, 3.0) - critic(image, nobody, item)
    assert one.abs().min() > 0 and torch.allclose(three, 3 * one, atol=1e-5)


def test_an_ideal_look_critic_recovers_a_bounded_taste_and_its_climb_stops_at_the_users_look(tmp_path):
    """CoverWorld's users (and a preference model's image tower) like a look most and less past it: A = −½‖Bφ − Cu‖²
    within groups. The critic's `ideal` user term can hold that, where the bilinear one only points a direction;
    climbing the fitted term moves a cover to the user's look and stops there (the planted reward's maximum, 0)."""
    gen = torch.Generator().manual_seed(5)
    look_of, user_of = torch.randn(4, DIM, generator=gen) / DIM ** 0.5, torch.randn(4, DIM, generator=gen) / DIM ** 0.5

    def planted(looks, users):
        return -0.5 * (looks @ look_of.T - users @ user_of.T).pow(2).sum(-1)

    critic = fitting_critic(tmp_path, gen, 8, user_form="ideal")
    correlations = planted_fit(critic, gen, planted, 40)
    assert np.mean(correlations[-5:]) > 0.85
    users, items, start, _ = grouped_batch(gen, 99)
    looks = start.clone().requires_grad_(True)
    climb = torch.optim.SGD([looks], lr=0.05)
    for _ in range(300):  # ascend the critic's user term alone (γ 1 minus γ 0)
        climb.zero_grad()
        (critic(looks, users, items, 0.0) - critic(looks, users, items, 1.0)).sum().backward()
        climb.step()
    before, after = planted(start, users), planted(looks.detach(), users)
    assert float(after.mean()) > 0.2 * float(before.mean())  # most of the way to the user's look (0) ...
    assert float((looks.detach() - start).norm(dim=-1).max()) < 10 * float(start.norm(dim=-1).mean())  # ... bounded


def test_the_user_weight_scales_the_whole_ideal_look_term(tmp_path):
    """With the `ideal` form γ scales −½‖Pφ − Qu‖² whole: the pull toward the user's look, not where it points."""
    gen = torch.Generator().manual_seed(6)
    critic = CoverCritic(tiny_embedder(tmp_path), torch.randn(50, DIM, generator=gen), rank=4, user_form="ideal")
    image, user, item = torch.randn(6, DIM, generator=gen), torch.randn(6, DIM, generator=gen), \
        torch.randn(6, 2 * DIM, generator=gen)
    zero, one, three = (critic(image, user, item, g) for g in (0.0, 1.0, 3.0))
    assert (one - zero).abs().min() > 0 and torch.allclose(three - zero, 3 * (one - zero), atol=1e-4)
    with pytest.raises(ValueError, match="nft_critic_user_form"):
        CoverCritic(tiny_embedder(tmp_path), torch.randn(50, DIM, generator=gen), user_form="quadratic")


def test_the_critics_floor_model_learns_a_floored_score_and_prices_only_the_covers_below_it(tmp_path):
    """A floored reward (CLIP-T-like: agreement with the title half, + an item's own rate) is fitted on its raw scores;
    the floor's price then pushes a cover below its floor toward its title, and leaves a cover above it alone."""
    gen = torch.Generator().manual_seed(7)
    critic = fitting_critic(tmp_path, gen, 4, floors={"clip_t": 0.95})
    correlations = []
    for batch in range(30):
        users, items, looks, keys = grouped_batch(gen, batch)
        relevance = 0.5 + 0.05 * (looks * items[:, DIM:]).sum(-1) + 0.1 * items[:, 0]
        metrics = critic.observe(looks, users, items, keys, torch.randn(32, generator=gen),
                                 floored={"clip_t": (relevance.numpy(), np.full(32, 0.6, np.float32))})
        correlations.append(metrics.get("critic/held_out_clip_t_corr", 0.0))
    assert np.mean(correlations[-5:]) > 0.9
    users, items, looks, _ = grouped_batch(gen, 100)
    predicted = critic.floor_models["clip_t"](looks, items).detach()
    floors = torch.stack([predicted + 0.3, predicted - 0.3], 1)[torch.arange(32), torch.arange(32) % 2][:, None]
    looks.requires_grad_(True)
    critic.floor_shortfall(looks, items, floors).sum().backward()
    below, above = torch.arange(32) % 2 == 0, torch.arange(32) % 2 == 1
    assert float(looks.grad[above].abs().max()) == 0.0
    toward_title = -(looks.grad[below] * items[below, DIM:]).sum(-1)  # descent direction · the title half
    assert float((toward_title > 0).float().mean()) > 0.9
    assert critic.floor_shortfall(looks, items, torch.full((32, 1), float("nan"))).abs().max() == 0


def test_the_critics_floors_need_floored_rewards():
    with pytest.raises(ValueError, match="reward.floors is empty"):
        load_config(None, ["algo.name=nft", "algo.eta=0.0", "algo.nft_critic_weight=1",
                           "algo.nft_critic_floor_weight=2", "reward.floors={}"])


def test_shaping_a_critic_that_is_off_is_refused():
    with pytest.raises(ValueError, match="nft_critic_weight > 0"):
        load_config(None, ["algo.name=nft", "algo.eta=0.0", "algo.nft_critic_shown=2"])
    with pytest.raises(ValueError, match="needs algo.eta=0"):
        load_config(None, ["algo.name=nft", "algo.eta=1.0", "algo.nft_critic_weight=1.0", "algo.nft_critic_steps=2"])
    with pytest.raises(ValueError, match="nft_critic_user_one_step=true .* needs algo.nft_critic_steps > 0"):
        load_config(None, ["algo.name=nft", "algo.eta=0.0", "algo.nft_critic_weight=1.0",
                           "algo.nft_critic_user_one_step=true"])


def test_a_tower_critic_learns_a_preference_models_shape_and_gamma_weighs_each_users_offset(tmp_path):
    """`user_form: tower` has the preference model's shape, ⟨H u, MLP(φ)⟩: a taste that saturates in the looks
    (A = ⟨M u, tanh(Bφ)⟩ within groups) is predicted on held-out batches (0.86-0.90 at the end on seeds 7-9). γ
    weighs only how each user differs from the replay's mean user: the mean user scores the same for every γ, and
    another user's difference from it is linear in γ."""
    gen = torch.Generator().manual_seed(7)
    looks_of, taste_of = (torch.randn(6, DIM, generator=gen) / DIM ** 0.5 for _ in range(2))

    def planted(looks, users):
        return (torch.tanh(looks @ looks_of.T) * (users @ taste_of.T)).sum(-1)

    critic = fitting_critic(tmp_path, gen, 4, user_form="tower", weight_decay=1e-3)
    correlations = planted_fit(critic, gen, planted, 40)
    assert np.mean(correlations[:2]) < 0.5 < 0.75 < np.mean(correlations[-5:])
    image, item = torch.randn(6, DIM, generator=gen), torch.randn(6, 2 * DIM, generator=gen)
    mean_user, user = critic.user_mean.expand(6, DIM), torch.randn(6, DIM, generator=gen)
    assert torch.allclose(critic(image, mean_user, item, 3.0), critic(image, mean_user, item), atol=1e-5)
    one, three = (critic(image, user, item, g) - critic(image, mean_user, item, g) for g in (1.0, 3.0))
    assert one.abs().min() > 0 and torch.allclose(three, 3 * one, atol=1e-4)
