from nightproxy.cli import main

raise SystemExit(main())
