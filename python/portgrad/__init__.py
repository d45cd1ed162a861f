"""portgrad: outputs and exact gradients (NetPortGradient) of neural nets, computed by a C++ kernel library.

    >>> import numpy as np, portgrad as pg
    >>> net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(8), "Tanh", pg.LinearLayer(1)], input=2), seed=0)
    >>> net(np.array([0.3, -1.2]), pg.NetPortGradient("Input")).shape
    (2,)
"""
from . import _core, _gpu
from ._io import load
from ._onnx import import_onnx
from ._onnx_export import export_onnx
from ._net import (All, Net, NetChain, NetExtract, NetInitialize, NetPort, NetPortGradient, NetPortHessian,
                   NetPortJacobian, NetPortTangent, NetReplacePart, NetSharedArray)
from .layers import (CrossEntropyLossLayer, ElementwiseLayer, FlattenLayer, LinearLayer, MeanAbsoluteLossLayer,
                     MeanSquaredLossLayer, ReshapeLayer, SoftmaxLayer)

from ._graph import NetDrop, NetGraph, NetTake
from ._laplacian import NetLaplacian
from ._train import NetTrain, NetTrainResults
from . import layers_conv, layers_norm, layers_sequence, layers_structure
from .layers_conv import *  # noqa: F401,F403
from .layers_norm import *  # noqa: F401,F403
from .layers_sequence import *  # noqa: F401,F403
from .layers_structure import *  # noqa: F401,F403

__version__ = "0.1.0"

__all__ = [
    "All", "Net", "NetChain", "NetDrop", "NetGraph", "NetPort", "NetTake", "NetExtract", "NetInitialize", "NetPortGradient", "NetPortHessian", "NetPortJacobian", "NetPortTangent", "NetReplacePart", "NetLaplacian",
    "NetSharedArray", "NetTrain", "NetTrainResults",
    "CrossEntropyLossLayer", "ElementwiseLayer", "FlattenLayer", "LinearLayer", "MeanAbsoluteLossLayer",
    "MeanSquaredLossLayer", "ReshapeLayer", "SoftmaxLayer", "active_isa", "export_onnx", "gpu_available", "import_onnx", "load", "num_threads", "set_num_threads",
] + layers_conv.__all__ + layers_norm.__all__ + layers_sequence.__all__ + layers_structure.__all__


def set_num_threads(n: int) -> None:
    """Threads used by large matrix products (default: the CPU count, or PORTGRAD_NUM_THREADS).
    Results are bit-identical for any thread count."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads takes a positive int, given {n!r}")
    _core.kernels.set_num_threads(n)


def num_threads() -> int:
    """Threads used by large matrix products."""
    return _core.kernels.num_threads()


def gpu_available() -> bool:
    """Whether TargetDevice="GPU" can run: a CUDA build with a CUDA device (or the CPU emulator of
    the CUDA kernels, when PORTGRAD_GPU_EMULATOR=1 asks for it)."""
    return _gpu.available()


def active_isa() -> str:
    """The instruction set the kernels run on: "avx512", "avx2" or "scalar" (PORTGRAD_ISA overrides)."""
    return _core.active_isa()
