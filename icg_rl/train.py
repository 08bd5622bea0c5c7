"""`python -m icg_rl.train`: the command lives in `icg_rl/commands/train.py`;
`icg-train` once installed."""

from icg_rl.commands.train import main

if __name__ == "__main__":
    raise SystemExit(main())
