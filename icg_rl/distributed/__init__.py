"""Ray actors and pools: rollout, reward and learner placement (DESIGN.md §8)."""
