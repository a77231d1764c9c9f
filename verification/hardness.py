"""The hard-instance probe, under its former name: :mod:`verification.probes.hardness`.

Everything is defined in :mod:`verification.probes.hardness` (a probe of the report like the
others in :mod:`verification.probes`); this module re-exports its public names.
"""

from .probes.hardness import *  # noqa: F401,F403
from .probes.hardness import __all__  # noqa: F401
