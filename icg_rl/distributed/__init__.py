"""Ray actors and pools: rollout, reward and learner placement (docs/architecture.md §8)."""
