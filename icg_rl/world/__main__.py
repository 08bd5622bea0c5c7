"""`python -m icg_rl.world`: the command lives in `icg_rl/commands/world.py`;
`icg-world` once installed."""

from icg_rl.commands.world import main

raise SystemExit(main())
