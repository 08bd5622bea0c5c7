"""The reward mix (docs/architecture.md §6): per-reward running normalisation, configurable weights, every
component logged.

    total = Σ_r w_r · (s_r − mean_r) / (std_r + eps)        (normalize=True)
    total = Σ_r w_r · s_r                                    (normalize=False)

A reward with a *floor* f is a constraint, not a term to climb: it costs only where a cover falls below f times
the score of its item's reference cover, s_ref, and is worth nothing above it:

    term_r = − w_r · max(0, f · s_ref − s_r) / (std_r + eps)

Why: relevance and the personal reward pull in different directions, and a weighted sum of normalised rewards lets
the stronger gradient win everywhere. With relevance as a weighted term, the oracle's own click probability at
weight 2 gained no personalization at all (issue 18); as a floor, relevance only pushes back on the covers that
drift off-title, and the personal reward moves the rest.

With `floor_rate` > 0 the floor is a constraint held by dual ascent (a Lagrange multiplier per floored reward):
after every batch, m_r ← m_r · exp(floor_rate · (f · mean(s_ref) − mean(s)) / std_r), kept in [0.1, 100], and the
term is paid at w_r · m_r. A policy that drifts below the floor on average meets a rising price until the batch
mean is back above it; one that stays above lets the price fall, so the personal reward keeps what the
constraint does not need. The same recipe then holds relevance on worlds whose trade-offs differ (issue 18).

Rewards live on different scales (an aesthetic score of ~5, a CLIP similarity of ~0.3, a click probability in
[0, 1]), so a fixed weight only means something after each reward is put on a common scale. mean_r / std_r are
running statistics over every batch seen so far, updated with the current batch before it is normalised, so the
first batch is normalised by its own statistics. Pure torch, no Ray: the driver calls it on gathered scores.
"""

from __future__ import annotations

import math

import torch

from icg_rl.rewards.base import check_finite


class RunningStats:
    """Running mean and (population) variance of a scalar stream, updated a batch at a time.

    Chan et al.'s parallel update merges a batch's (count, mean, M2) into the running ones; sums are kept in
    Python floats (float64), so the result equals numpy's mean/std (ddof=0) over the concatenation of all batches
    up to rounding, however the stream was split.
    """

    def __init__(self):
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # Σ (x − mean)², over everything seen

    def update(self, x: torch.Tensor) -> None:
        if x.ndim != 1:
            raise ValueError(f"RunningStats.update: x must be 1-D [B], got shape {tuple(x.shape)}")
        n_b = int(x.numel())
        if n_b == 0:
            return
        x64 = x.detach().to(torch.float64)
        mean_b = float(x64.mean())
        m2_b = float(((x64 - mean_b) ** 2).sum())  # reduction over the batch
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.count * n_b / n
        self.count = n

    @property
    def var(self) -> float:
        return self.m2 / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def state_dict(self) -> dict:
        """Plain floats (JSON-serialisable), enough to continue the stream exactly after a resume."""
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        missing = {"count", "mean", "m2"} - set(state)
        if missing:
            raise KeyError(f"RunningStats.load_state_dict: missing keys {sorted(missing)}; got {sorted(state)}")
        if int(state["count"]) < 0 or float(state["m2"]) < 0:
            raise ValueError(f"RunningStats.load_state_dict: count and m2 must be >= 0, got {state}")
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])

    def __repr__(self) -> str:
        return f"RunningStats(count={self.count}, mean={self.mean:.6g}, std={self.std:.6g})"


class RewardMixer:
    """Mixes per-reward scores into one reward per sample and reports each component.

    Rewards with a non-zero weight are required, checked finite, tracked and mixed. Rewards in `scores` with a
    zero weight, or with no weight at all, are only logged (raw mean and std). Negative weights are allowed
    (a penalty); the mixer's statistics are its whole state, so `state_dict` is what a checkpoint needs.
    """

    def __init__(self, weights: dict[str, float], normalize: bool = True, eps: float = 1e-6,
                 floors: dict[str, float] | None = None, floor_rate: float = 0.0):
        if not weights:
            raise ValueError("reward.weights: empty; give at least one reward with a non-zero weight")
        for name, w in weights.items():
            if not math.isfinite(float(w)):
                raise ValueError(f"reward.weights.{name}: weight must be finite, got {w}")
        if all(float(w) == 0.0 for w in weights.values()):
            raise ValueError(f"reward.weights: every weight is zero ({weights}); the mixed reward would be constant")
        if not eps > 0:
            raise ValueError(f"RewardMixer eps: must be > 0, got {eps}")
        self.weights = {name: float(w) for name, w in weights.items()}
        self.normalize = normalize
        self.eps = eps
        self.mixed = [name for name, w in self.weights.items() if w != 0.0]  # in the weights' order
        self.floors = {name: float(f) for name, f in (floors or {}).items()}
        unweighted = sorted(set(self.floors) - set(self.mixed))
        if unweighted:
            raise ValueError(f"reward.floors: {unweighted} have no non-zero weight in reward.weights "
                             f"({self.weights}); a floor's weight is the price of falling below it")
        self.stats = {name: RunningStats() for name in self.mixed}
        if not floor_rate >= 0:
            raise ValueError(f"reward.floor_rate: must be >= 0, got {floor_rate}")
        self.floor_rate = float(floor_rate)
        self.multipliers = {name: 1.0 for name in self.floors}  # the floors' prices (dual variables)

    @classmethod
    def from_config(cls, weights: dict[str, float], reward_cfg) -> RewardMixer:
        """The mix a `reward` config section describes, over `weights` (its non-zero weights)."""
        return cls(weights, normalize=reward_cfg.normalize, floors=reward_cfg.floors, floor_rate=reward_cfg.floor_rate)

    def __call__(self, scores: dict[str, torch.Tensor], update: bool = True,
                 reference_scores: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """scores {name: Tensor[B]} -> (total Tensor[B], metrics {"reward/<name>": ..., "reward/total": ...}).

        With `update=False` (evaluation) the running statistics are used but not changed. Gradients flow through
        the normalisation (mean and std are constants), so differentiable rewards stay differentiable.
        `reference_scores` {name: Tensor[B]}: each floored reward's score of the rows' reference covers (NaN where
        an item has none: no floor there).
        """
        self._check_scores(scores)
        metrics: dict[str, float] = {}
        total = None
        if update:
            self.update(scores, reference_scores)
        for name in self.mixed:
            s = scores[name]
            if name in self.floors:
                price = self.weights[name] * self.multipliers[name]
                term = -price * self._shortfall(name, s, reference_scores, metrics)
                metrics[f"reward/{name}_multiplier"] = self.multipliers[name]
            else:
                norm = self._normalise(name, s)
                term = self.weights[name] * norm
                metrics[f"reward/{name}_norm"] = float(norm.detach().mean())
            total = term if total is None else total + term
            metrics.update(_describe(name, s))
        for name in scores:
            if name not in self.stats:  # zero weight or no weight: logged, not mixed
                metrics.update(_describe(name, scores[name]))
        metrics["reward/total"] = float(total.detach().mean())
        return total, metrics

    def update(self, scores: dict[str, torch.Tensor], reference_scores: dict[str, torch.Tensor] | None = None) -> None:
        """Fold a batch of scores into the running statistics of every mixed reward (without mixing), and with
        `floor_rate` > 0 take one dual step on each floor's multiplier (needs the batch's reference scores)."""
        self._check_scores(scores)
        for name in self.mixed:
            self.stats[name].update(scores[name].detach())
        if self.floor_rate == 0:
            return
        for name, floor in self.floors.items():
            reference = (reference_scores or {}).get(name)
            if reference is None:
                raise KeyError(f"reward {name!r}: reward.floor_rate > 0 needs its reference scores to price the floor")
            s, known = scores[name].detach().double(), ~torch.isnan(reference)
            if not known.any():
                continue  # no reference cover in this batch: nothing to compare with
            gap = floor * float(reference[known].double().mean()) - float(s[known].mean())
            step = self.floor_rate * gap / ((self.stats[name].std if self.normalize else 1.0) + self.eps)
            self.multipliers[name] = min(100.0, max(0.1, self.multipliers[name] * math.exp(step)))

    def _check_scores(self, scores: dict[str, torch.Tensor]) -> None:
        sizes = {}
        for name in self.mixed:
            if name not in scores:
                raise KeyError(f"reward {name!r} has weight {self.weights[name]} but no scores; "
                               f"scores given for: {sorted(scores)}")
            s = scores[name]
            if not isinstance(s, torch.Tensor) or s.ndim != 1:
                shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise ValueError(f"reward {name!r}: scores must be a 1-D Tensor[B], got {shape}")
            check_finite(s, name)
            sizes[name] = s.shape[0]
        if len(set(sizes.values())) > 1:
            raise ValueError(f"rewards scored different batch sizes: {sizes}; every reward scores the same batch")

    def _shortfall(self, name: str, s: torch.Tensor, reference_scores: dict | None, metrics: dict) -> torch.Tensor:
        """max(0, f · s_ref − s) per row, in units of the reward's running std (raw units without normalisation)."""
        reference = (reference_scores or {}).get(name)
        if reference is None or reference.shape != s.shape:
            raise KeyError(f"reward {name!r} has a floor ({self.floors[name]} × the reference cover's score) but no "
                           f"reference scores of shape {tuple(s.shape)}; got "
                           f"{None if reference is None else tuple(reference.shape)}")
        floor = self.floors[name] * reference.detach().to(s.dtype)
        shortfall = torch.nan_to_num(torch.relu(floor - s), nan=0.0)  # an item without a reference: no floor
        metrics[f"reward/{name}_below_floor"] = float((shortfall.detach() > 0).float().mean())
        if self.normalize:
            shortfall = shortfall / (self.stats[name].std + self.eps)
        return shortfall

    def _normalise(self, name: str, s: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return s
        stats = self.stats[name]
        if stats.count == 0:
            raise RuntimeError(f"reward {name!r}: normalising with update=False before any statistics were "
                               f"gathered; call with update=True first (or load_state_dict)")
        return (s - stats.mean) / (stats.std + self.eps)

    def state_dict(self) -> dict:
        """Running statistics of every mixed reward and the floors' multipliers, as plain floats (JSON)."""
        return {"stats": {name: st.state_dict() for name, st in self.stats.items()},
                "multipliers": dict(self.multipliers)}

    def load_state_dict(self, state: dict) -> None:
        given = set(state.get("stats", {}))
        if given != set(self.stats):
            raise ValueError(f"RewardMixer.load_state_dict: checkpoint has statistics for {sorted(given)}, "
                             f"this mix weights {sorted(self.stats)}; the weighted rewards must match to resume")
        for name, st in state["stats"].items():
            self.stats[name].load_state_dict(st)
        self.multipliers |= {n: float(m) for n, m in state.get("multipliers", {}).items() if n in self.multipliers}


def _describe(name: str, s: torch.Tensor) -> dict[str, float]:
    """Raw batch mean and (population) std of one reward's scores."""
    s64 = s.detach().to(torch.float64)
    return {f"reward/{name}": float(s64.mean()), f"reward/{name}_std": float(s64.std(unbiased=False))}
