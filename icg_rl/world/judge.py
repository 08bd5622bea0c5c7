"""The genre judge: a small CNN trained on CoverWorld's real covers, used to check that base-model samples look
like their title's genre (an evaluation instrument, like an FID network; never a training signal)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


class GenreJudge(nn.Module):
    def __init__(self, num_genres: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (32, H/2, W/2)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (64, H/4, W/4)
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),  # (64, 1, 1)
        )
        self.classify = nn.Linear(64, num_genres)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> genre logits [B, G]."""
        return self.classify(self.features(images * 2 - 1).flatten(1))


def train_judge(judge: GenreJudge, images, labels, steps, batch_size, generator, progress=True) -> dict:
    """Cross-entropy on real covers with flips/noise; returns held-out accuracy on 10% of the covers."""
    order = torch.randperm(len(images), generator=generator)
    n_valid = max(1, len(images) // 10)
    valid, train = order[:n_valid], order[n_valid:]
    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3)
    judge.train()
    for _ in tqdm(range(steps), desc="judge", disable=not progress, mininterval=2.0):
        idx = train[torch.randint(len(train), (batch_size,), generator=generator)]
        x = images[idx] + 0.03 * torch.randn(images[idx].shape, generator=generator)  # robust to sample noise
        loss = F.cross_entropy(judge(x.clamp(0, 1)), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    judge.eval()
    return {"valid_accuracy": accuracy(judge, images[valid], labels[valid])}


@torch.no_grad()
def accuracy(judge: GenreJudge, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((judge(images).argmax(-1) == labels).float().mean())
