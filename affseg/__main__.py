from affseg.cli import main

raise SystemExit(main())
