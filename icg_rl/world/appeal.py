"""What CoverWorld's users click and what its public finds beautiful: the click model and the aesthetic truth.

Click model (docs/architecture.md §4), for user u, item i of genre g, cover x with features φ(x) (see features.py):

    logit = α · affinity_u[g]  −  β · mean_k (W_k (φ_k(x) − φ*_u,k))²  +  bias_i  +  c
    P(click) = σ(logit)

W_k = 1 / std of feature k over the world's covers, so each feature counts in units of its natural spread and
the mean over k keeps β independent of how many features there are. Taste is a bounded ideal point: appeal peaks
at φ*_u and falls off around it, so pushing any feature "further" loses clicks past the user's ideal.

Aesthetic truth (1..10, like AVA ratings): a Gaussian bump around a population ideal look, minus a penalty for
exposure clipping — saturated, blown-out images lose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AESTHETIC_IDEAL = np.array([0.50, 0.05, 0.40, 0.22, 0.0])  # brightness, warmth, saturation, contrast, |composition|
AESTHETIC_SCALE = np.array([0.18, 0.15, 0.25, 0.10, 0.35])
AESTHETIC_IDEAL_OFFCENTRE = 0.3  # the public likes a motif on a third line, not dead centre


@dataclass(frozen=True)
class ClickModel:
    genre_weight: float  # α
    look_weight: float  # β
    offset: float  # c
    feature_scale: np.ndarray  # W, (5,)

    def look_distance(self, features: np.ndarray, ideal: np.ndarray) -> np.ndarray:
        """mean_k (W_k (φ_k − φ*_k))²: (N, 5), (N, 5) -> (N,)."""
        return ((self.feature_scale * (features - ideal)) ** 2).mean(axis=-1)  # mean over the 5 features

    def logit(self, affinity: np.ndarray, features: np.ndarray, ideal: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """affinity (N,) of the user for the item's genre, features/ideal (N, 5), item bias (N,) -> (N,)."""
        return (self.genre_weight * affinity - self.look_weight * self.look_distance(features, ideal)
                + bias + self.offset)

    def prob(self, affinity: np.ndarray, features: np.ndarray, ideal: np.ndarray, bias: np.ndarray) -> np.ndarray:
        return sigmoid(self.logit(affinity, features, ideal, bias))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def aesthetic_truth(features: np.ndarray, clipping: np.ndarray) -> np.ndarray:
    """features (N, 5), exposure-clipping share (N,) -> aesthetic score in [1, 10], (N,)."""
    look = features.copy()
    look[:, 4] = np.abs(np.abs(look[:, 4]) - AESTHETIC_IDEAL_OFFCENTRE)  # distance from the nearest third line
    z = (look - AESTHETIC_IDEAL) / AESTHETIC_SCALE
    score = 1.0 + 9.0 * np.exp(-0.5 * (z**2).mean(axis=-1)) - 4.0 * clipping  # mean over features
    return np.clip(score, 1.0, 10.0)
