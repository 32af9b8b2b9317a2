from pasarela.cli import main

raise SystemExit(main())
