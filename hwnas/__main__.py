"""``python -m hwnas``: the ``hwnas`` command."""
import sys

from hwnas.cli import main

sys.exit(main())
