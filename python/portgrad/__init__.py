"""portgrad: outputs and exact gradients (NetPortGradient) of neural nets, computed by a C++ kernel library.

    >>> import numpy as np, portgrad as pg
    >>> net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(8), "Tanh", pg.LinearLayer(1)], input=2), seed=0)
    >>> net(np.array([0.3, -1.2]), pg.NetPortGradient("Input")).shape
    (2,)
"""
from . import _core
from ._io import load
from ._net import All, Net, NetChain, NetExtract, NetInitialize, NetPortGradient, NetReplacePart
from .layers import (CrossEntropyLossLayer, ElementwiseLayer, FlattenLayer, LinearLayer, MeanAbsoluteLossLayer,
                     MeanSquaredLossLayer, ReshapeLayer, SoftmaxLayer)

__version__ = "0.1.0"

__all__ = [
    "All", "Net", "NetChain", "NetExtract", "NetInitialize", "NetPortGradient", "NetReplacePart",
    "CrossEntropyLossLayer", "ElementwiseLayer", "FlattenLayer", "LinearLayer", "MeanAbsoluteLossLayer",
    "MeanSquaredLossLayer", "ReshapeLayer", "SoftmaxLayer", "active_isa", "load",
]


def active_isa() -> str:
    """The instruction set the kernels run on: "avx512", "avx2" or "scalar" (PORTGRAD_ISA overrides)."""
    return _core.active_isa()
