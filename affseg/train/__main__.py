from affseg.train.runner import main

raise SystemExit(main())
