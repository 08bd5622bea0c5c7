"""Ray Serve application for personalized covers (docs/architecture.md §9): FastAPI ingress, the generator deployment,
multiplexed policies, limits, A/B experiments, metrics. Its settings are configuration (`icg_rl/config/serve.py`);
the command is `icg_rl/commands/serve.py` (`python -m icg_rl.serve`).

May import every layer below (distributed, rl, models, ...); only `__main__.py` reaches up, to hand over to the command.
"""
