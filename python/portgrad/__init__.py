"""portgrad: outputs and exact gradients (NetPortGradient) of neural nets, computed by a C++ kernel library."""
from . import _core

__version__ = "0.1.0"
