"""``python -m kronos_tasks.cli``: the kronos-flow command."""

from . import main

raise SystemExit(main())
