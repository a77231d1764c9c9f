"""The Match3 demo, under its former name: :mod:`verification.probes.match3`.

Everything is defined in :mod:`verification.probes.match3` (a probe of the report like the
others in :mod:`verification.probes`); this module re-exports its public names and keeps the
command line: ``python -m verification.match3 --config quick --out DIR``.
"""

import sys

from .probes.match3 import *  # noqa: F401,F403
from .probes.match3 import __all__, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
