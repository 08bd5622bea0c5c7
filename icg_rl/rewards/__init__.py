"""Rewards (docs/architecture.md §6): `RewardModel` (`base.py`, a leaf), the built-in rewards — aesthetic, CLIP-T,
CLIP-I, PickScore, preference and preference lift —, their registry (`registry.py`, an explicit table) and the mix
(running normalisation, weights, floors).

May import: preference (the preference reward wraps its model), models, data, paths, config, metrics, io.
"""
