"""Ray Serve application for personalized covers (docs/architecture.md §9): `python -m icg_rl.serve --checkpoint
PATH`."""
