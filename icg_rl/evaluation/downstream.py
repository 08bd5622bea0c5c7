"""Downstream recommendation: does a recommender that sees covers rank better with an arm's covers?

A small multimodal CTR model — user id, item id and the CLIP image embedding of the cover shown — is trained on the
training split's impressions (the logged covers). It then scores test impressions with the image features of each
arm's cover for that (user, item) instead; labels stay the logged clicks. Reported per arm: AUC over impressions
and NDCG@10 over each user's test impressions. The `logged` row (the covers users actually saw) is the reference.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from icg_rl.evaluation.scores import ndcg_at_k
from icg_rl.metrics import roc_auc


class CTRModel(nn.Module):
    def __init__(self, num_users: int, num_items: int, image_dim: int, dim: int = 32):
        super().__init__()
        self.user = nn.Embedding(num_users + 1, dim)  # row 0: unknown
        self.item = nn.Embedding(num_items + 1, dim)
        self.image = nn.Sequential(nn.Linear(image_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.head = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(self, user: torch.Tensor, item: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        u, i, v = self.user(user), self.item(item), self.image(F.normalize(image, dim=-1))
        return self.head(torch.cat([u * v, i, v], dim=-1)).squeeze(-1) + (u * i).sum(-1)  # user×cover interaction


def fit_ctr_model(users: np.ndarray, items: np.ndarray, images: np.ndarray, labels: np.ndarray, epochs: int,
                  seed: int, batch_size: int = 256) -> CTRModel:
    """users/items: index arrays (0 = unknown) [N], images: embeddings [N, D], labels: 0/1 [N]."""
    torch.manual_seed(seed)
    model = CTRModel(int(users.max()), int(items.max()), images.shape[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    data = [torch.as_tensor(a) for a in (users, items, images.astype(np.float32), labels.astype(np.float32))]
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(labels), generator=generator).split(batch_size):
            loss = F.binary_cross_entropy_with_logits(model(data[0][rows], data[1][rows], data[2][rows]),
                                                      data[3][rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def rank_quality(model: CTRModel, users: np.ndarray, items: np.ndarray, images: np.ndarray, labels: np.ndarray,
                 groups: np.ndarray) -> dict[str, float]:
    scores = model(torch.as_tensor(users), torch.as_tensor(items), torch.as_tensor(images.astype(np.float32)))
    scores = scores.numpy()
    return {"auc": roc_auc(scores, labels > 0.5), "ndcg@10": ndcg_at_k(scores, labels, groups, k=10)}


def index_of(values, vocabulary: dict) -> np.ndarray:
    return np.asarray([vocabulary.get(v, 0) for v in values], dtype=np.int64)
