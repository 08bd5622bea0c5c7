"""RL for diffusion policies (docs/architecture.md §7): DDIM and flow-SDE steps with their log-probs, DDPO/GRPO,
DRaFT-K reward backprop, group advantages, weight averaging, and the in-process reference trainer (`local.py`).

Pure math that tests call without Ray. May import: rewards, preference, models, data, paths, config, metrics, io —
never distributed/ (the Ray trainer must match this one, not the other way round).
"""
