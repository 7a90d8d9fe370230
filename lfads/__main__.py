from lfads.cli import main

raise SystemExit(main())
