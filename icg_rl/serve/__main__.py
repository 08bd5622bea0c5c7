"""`python -m icg_rl.serve`: the command lives in `icg_rl/commands/serve.py`;
`icg-serve` once installed."""

from icg_rl.commands.serve import main

raise SystemExit(main())
