"""`python -m icg_rl.preference`: the command lives in `icg_rl/commands/preference.py`;
`icg-preference` once installed."""

from icg_rl.commands.preference import main

raise SystemExit(main())
