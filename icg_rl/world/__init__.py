"""CoverWorld (docs/architecture.md §4): the synthetic recommender world — genres, titles, covers and their
variants, users with a hidden visual taste, click logs — and its oracle, the truth evaluation measures against.

Owns: generation (`generate.py`, built by `python -m icg_rl.world build`), rendering and pixel features, the world's
genre judge, and the oracle (`oracle.py`, read by evaluation code only: training, rewards and models never import
it, `tests/test_oracle_isolation.py`). May import: data, paths, config, metrics, io.
"""
