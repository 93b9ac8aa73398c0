"""katyusha: a load-balancing data plane for serverless-style fleets."""

import os as _os

from katyusha import compiled as _compiled

__version__ = "0.1.0"

# The modules a request runs through may be compiled (setup.py); the finder loads
# a compiled one only while its .py is unchanged, never with KATYUSHA_PURE_PYTHON=1.
_compiled.install(_os.path.dirname(_os.path.abspath(__file__)))
