from ppl.cli import main

raise SystemExit(main())
