"""`python -m icg_rl.evaluate`: the command lives in `icg_rl/commands/evaluate.py`;
`icg-evaluate` once installed."""

from icg_rl.commands.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
