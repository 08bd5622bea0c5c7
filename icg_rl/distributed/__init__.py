"""The Ray side (docs/architecture.md §8): `RayTrainer` (`trainer.py`, the driver loop), the rollout, reward and learner
actors, placement and the fit check, weight sync, and the run plumbing the trainer uses — checkpoints
(`checkpoint.py`), tracking (`tracking.py`) and model cards (`model_card.py`).

Actors own devices and models; the algorithm comes from rl/. May import every layer below: evaluation, rl, rewards,
preference, models, world, data, paths, config, metrics, io.
"""
