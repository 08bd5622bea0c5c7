from icg_rl.world.cli import main

raise SystemExit(main())
