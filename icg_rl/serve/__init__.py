"""Ray Serve application for personalized covers (DESIGN.md §9): `python -m icg_rl.serve --checkpoint PATH`."""
