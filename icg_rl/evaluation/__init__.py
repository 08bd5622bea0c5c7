"""Evaluation (docs/architecture.md §10): held-out pairs and arms, the world's oracle, reward scores, LPIPS, the MLLM
judge, the downstream CTR model and the benchmark-only gold reward.

May import: rl (sampling), rewards, preference, models, world (the oracle: evaluation is where it may be read), data,
paths, config, metrics, io. The command is `icg_rl/commands/evaluate.py`.
"""
