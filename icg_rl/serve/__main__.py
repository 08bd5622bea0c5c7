from icg_rl.serve.cli import main

raise SystemExit(main())
