"""An untrained ICG policy whose covers already depend on the user and title: fresh ICG weights from a seed, the
adapter gate opened (ICG tokens reach the denoiser) and the refiner perturbed (a user-dependent refinement, as
training would leave). The serving tests and benchmarks/serve_load.py serve these; the test checkpoints are made
here once, not by a copy of this recipe per fixture."""

from __future__ import annotations

from pathlib import Path


def save_fresh_policy(cfg, folder: Path, seed: int, context: tuple[list[str], dict] | None = None
                      ) -> tuple[Path, list[str], list[str]]:
    """-> (folder, known user ids, item ids). `context`: policy_context(cfg, data), when the caller has it already
    (it embeds the catalogue with CLIP)."""
    import torch

    from icg_rl.data import load_from_config
    from icg_rl.models.item_features import policy_context
    from icg_rl.models.pipeline import pipeline_from_config

    users, features = context or policy_context(cfg, load_from_config(cfg))
    torch.manual_seed(seed)
    pipe = pipeline_from_config(cfg, user_ids=users, item_features=features)
    with torch.no_grad():
        pipe.icg.adapter.projection.gate.fill_(3.0)
        for p in pipe.icg.refiner.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    pipe.save_pretrained(folder)
    return Path(folder), users, list(features)
