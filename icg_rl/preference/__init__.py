"""The personalized preference model (docs/architecture.md §6): a two-tower click model, its impressions, its save/load
(`model.py`) and its fit with Ray Train + Ray Data (`train.py`).

May import: models (its user tower is the ICG user encoder; CLIP features), world, data, paths, config, metrics, io.
The command that trains it is `icg_rl/commands/preference.py`.
"""
