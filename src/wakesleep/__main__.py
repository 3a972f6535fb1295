from wakesleep.cli import main

raise SystemExit(main())
