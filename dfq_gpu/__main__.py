"""``python -m dfq_gpu``: the command line (see ``dfq_gpu.cli``)."""

from .cli import main

raise SystemExit(main())
