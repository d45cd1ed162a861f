"""What a case asks of an implementation, and what an implementation hands back.

A case is an MLP (``MlpSpec`` and a ``kind``), a CNN (``CnnSpec``, kinds "fwd" and "igrad") or a
GEMM (``GemmSpec``). Every implementation —
portgrad's and each peer's — turns it into an :class:`Impl`: a function timed on inputs from a
pool, and a conversion of its result to NumPy used (outside the timing) to check it against
portgrad's.

Results, in the same order for every implementation:
- ``"fwd"``:     the output, shape (batch, n_out) or (n_out,) for one example;
                 for a CNN, (batch, n_out);
- ``"igrad"``:   d sum(outputs) / d input, per example, the input's shape;
- ``"pgrad"``:   [dW0, db0, dW1, db1, ...], each summed over the batch, W as (n_out, n_in);
- ``"fwd_bwd"``: the ``pgrad`` list followed by the input gradient.
The gradient kinds compute the forward pass but do not return its output.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

KINDS = ("fwd", "igrad", "pgrad", "fwd_bwd")
KIND_TEXT = {
    "fwd": "forward",
    "igrad": "forward + input gradient",
    "pgrad": "forward + all parameter gradients",
    "fwd_bwd": "forward + all parameter and input gradients",
}


class NotApplicable(Exception):
    """The implementation does not cover this case (the row says why)."""


@dataclass(frozen=True)
class MlpSpec:
    dims: tuple            # (n_in, hidden..., n_out)
    act: str               # "Tanh" or "Ramp" (ReLU), after every layer but the last
    batch: Optional[int]   # None: one example of shape (n_in,)

    @property
    def n_layers(self) -> int:
        return len(self.dims) - 1

    def input_shape(self) -> tuple:
        return (self.dims[0],) if self.batch is None else (self.batch, self.dims[0])

    def flops(self, kind: str) -> int:
        """2*m*n*k per matrix product: forward is one product per layer; the input gradient adds
        dX = dZ @ W for every layer; parameter gradients add dW = dZ^T @ X for every layer
        (bias sums and activations are not counted). With parameter gradients the first layer's dX
        is only computed when the input gradient is asked for too."""
        b = 1 if self.batch is None else self.batch
        per_layer = [2 * b * i * o for i, o in zip(self.dims[:-1], self.dims[1:])]
        fwd = sum(per_layer)
        if kind == "fwd":
            return fwd
        if kind == "igrad":
            return 2 * fwd
        if kind == "pgrad":
            return 2 * fwd + sum(per_layer[1:])
        return 3 * fwd  # fwd_bwd


@dataclass(frozen=True)
class CnnSpec:
    """A small CNN, channels first: for each stage (c_out) a Conv c_in->c_out, k x k, stride 1,
    padding (k-1)/2 ("Same"), with biases, then ReLU, then MaxPool 2 stride 2; then Flatten (c, h, w
    order) and a Linear layer to n_out. Input (batch, c, h, w)."""
    in_shape: tuple        # (c, h, w)
    stages: tuple          # output channels of each conv stage
    n_out: int
    batch: int
    k: int = 3
    pool: int = 2

    def input_shape(self) -> tuple:
        return (self.batch, *self.in_shape)

    def shapes(self) -> list:
        """(c, h, w) after each conv (before its pool), then the flattened feature count."""
        c, h, w = self.in_shape
        out = []
        for n in self.stages:
            out.append((n, h, w))
            c, h, w = n, h // self.pool, w // self.pool
        return out + [c * h * w]

    def flops(self, kind: str) -> int:
        """2*k*k*c_in per conv output element and 2*n_in per linear output, per example; the input
        gradient costs about as much again (dX of every conv and the linear layer; the first conv's
        dX included). Pooling, ReLU and biases are not counted."""
        c_in = self.in_shape[0]
        fwd = 0
        for (n, h, w) in self.shapes()[:-1]:
            fwd += 2 * self.k * self.k * c_in * n * h * w
            c_in = n
        fwd += 2 * self.shapes()[-1] * self.n_out
        fwd *= self.batch
        return fwd if kind == "fwd" else 2 * fwd


@dataclass(frozen=True)
class GemmSpec:
    m: int
    n: int
    k: int
    dtype: str             # "float32" or "float64"

    def flops(self, kind: str = "gemm") -> int:
        return 2 * self.m * self.n * self.k


@dataclass
class Impl:
    fn: Callable[[Any], Any]                      # timed: one call on one pool input
    to_numpy: Callable[[Any], Any] = lambda r: r  # result -> array or list of arrays (not timed)
    prepare: Optional[Callable[[Any], Any]] = None  # applied to each pool input before timing
    notes: list = field(default_factory=list)
