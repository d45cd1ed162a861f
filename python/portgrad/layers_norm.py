"""Normalisation, dropout and embedding layers (channels first; Wolfram names and defaults)."""
from __future__ import annotations

import math
import numbers

from ._net import _shared_option
from .layers import _Layer

__all__ = ["BatchNormalizationLayer", "NormalizationLayer", "DropoutLayer", "EmbeddingLayer"]


def _real(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, given {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, given {value!r}")
    return float(value)


def _count(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be a positive int, given {value!r}")
    if int(value) < 1:
        raise ValueError(f"{what} must be a positive int, given {value!r}")
    return int(value)


class BatchNormalizationLayer(_Layer):
    """``BatchNormalizationLayer(momentum=0.9, epsilon=0.001)``: per-channel normalisation; the
    channel is the first axis of an example (a vector (c,) or an array (c, d1, ...)).

    Arrays (each of shape (c,)): "Scaling" (1 at NetInitialize), "Biases" (0), and the running
    state "MovingMean" (0) and "MovingVariance" (1), which have no gradient.
    ``NetEvaluationMode="Test"`` (default): y = Scaling (x - MovingMean) / sqrt(MovingVariance +
    epsilon) + Biases. ``"Train"``: the batch's own mean and (biased) variance over batch and spatial
    positions, with the gradient through them; each Train evaluation moves the running state:
    moving = momentum * moving + (1 - momentum) * batch value, with the unbiased batch variance
    (as PyTorch does; Wolfram does not document which). Train mode needs more than one value per
    channel. ``scaling=``, ``biases=``, ``moving_mean=`` and ``moving_variance=`` take a
    NetSharedArray: that array is then one that every layer naming it uses.
    """

    _type = "BatchNormalizationLayer"

    def __init__(self, momentum=0.9, epsilon=0.001, *, scaling=None, biases=None, moving_mean=None,
                 moving_variance=None, input=None):
        super().__init__({"momentum": _real(momentum, "BatchNormalizationLayer: momentum"),
                          "epsilon": _real(epsilon, "BatchNormalizationLayer: epsilon"),
                          **_shared_option("BatchNormalizationLayer", Scaling=scaling, Biases=biases,
                                           MovingMean=moving_mean, MovingVariance=moving_variance)},
                         {"Input": input})


class NormalizationLayer(_Layer):
    """``NormalizationLayer(levels="Default", epsilon=0.001)``: normalisation of each example by its
    own statistics, y = Scaling (x - mean) / sqrt(var + epsilon) + Biases (biased variance).

    ``levels="Default"`` is Wolfram's default (aggregation levels 2;;All): an input (c, d1, ...) is
    normalised per channel over its d1, ... values, with "Scaling" and "Biases" of shape (c,); a
    vector (c,) is normalised as a whole, with arrays of shape (c,). ``levels="All"``: the whole
    example at once, with arrays of the example's shape (PyTorch's LayerNorm over the example).
    ``levels=-k`` (a negative int): every position of the leading axes over the last k axes, with
    arrays of those axes' shape (Wolfram's aggregation levels -k;;All; ONNX's LayerNormalization
    with axis=-k). A transformer's LayerNorm over (sequence, features) is ``levels=-1``.
    ``scaling=`` and ``biases=`` take a NetSharedArray (one array for every layer naming it).
    """

    _type = "NormalizationLayer"

    def __init__(self, levels="Default", epsilon=0.001, *, scaling=None, biases=None, input=None):
        if isinstance(levels, numbers.Integral) and not isinstance(levels, bool):
            if levels >= 0:
                raise ValueError(f"NormalizationLayer: levels as an int must be negative (-k: the last k axes), "
                                 f"given {levels!r}")
            levels = int(levels)
        elif levels not in ("Default", "All"):
            raise ValueError(f"NormalizationLayer: levels must be 'Default', 'All' or a negative int -k "
                             f"(the last k axes), given {levels!r}")
        super().__init__({"levels": levels, "epsilon": _real(epsilon, "NormalizationLayer: epsilon"),
                          **_shared_option("NormalizationLayer", Scaling=scaling, Biases=biases)}, {"Input": input})


class DropoutLayer(_Layer):
    """``DropoutLayer(p=0.5)``: the identity in ``NetEvaluationMode="Test"``; in ``"Train"`` each
    element is zeroed with probability p and the others scaled by 1 / (1 - p). The mask depends on
    ``RandomSeeding`` (fresh each call by default), the layer's position in its net and the
    element, and the gradient uses the same mask."""

    _type = "DropoutLayer"

    def __init__(self, p=0.5, *, input=None):
        super().__init__({"p": _real(p, "DropoutLayer: p")}, {"Input": input})


class EmbeddingLayer(_Layer):
    """``EmbeddingLayer(size, n)``: integer class indices 0, ..., n - 1 (an int or an array of any
    shape) to vectors of length ``size``: output shape (*input shape, size). Array "Weights" of shape
    (n, size) (row i embeds index i; random at NetInitialize). Out-of-range indices raise IndexError;
    the input has no gradient."""

    _type = "EmbeddingLayer"

    def __init__(self, size, n, *, weights=None, input=None):
        super().__init__({"size": _count(size, "EmbeddingLayer: size"), "n": _count(n, "EmbeddingLayer: n"),
                          **_shared_option("EmbeddingLayer", Weights=weights)}, {"Input": input})
