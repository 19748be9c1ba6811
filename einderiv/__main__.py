"""``python -m einderiv ...``: the same command line as ``einderiv ...``."""
from .cli import main

raise SystemExit(main())
