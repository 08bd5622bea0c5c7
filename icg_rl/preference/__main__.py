from icg_rl.preference.cli import main

raise SystemExit(main())
