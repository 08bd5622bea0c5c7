"""The commands users run: one module each, the top of the package's layers (docs/architecture.md §2).

    python -m icg_rl.world build    icg-world        commands/world.py       CoverWorld and its tiny base models
    python -m icg_rl.preference     icg-preference   commands/preference.py  the click model (Ray Train)
    python -m icg_rl.train          icg-train        commands/train.py       RL fine-tuning (RayTrainer)
    python -m icg_rl.evaluate       icg-evaluate     commands/evaluate.py    the evaluation suite of a policy
    python -m icg_rl.serve          icg-serve        commands/serve.py       the Ray Serve app

Owns: argument parsing, the order of a command's phases, printing, `summary.json`, exit codes (`common.py`),
`--check-paths` (`check_paths.py`). May import every layer below it; nothing below imports it (the `python -m`
modules of world/, preference/ and serve/ only hand over to it, see pyproject.toml).
"""
