"""``python -m cli``: the same as the ``swarm-manager`` console script."""

from cli.main import main

raise SystemExit(main())
