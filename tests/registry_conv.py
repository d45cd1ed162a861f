"""Registry entries for ConvolutionLayer, DeconvolutionLayer and PoolingLayer, with independent NumPy
float64 references written from the definitions (zero-padded, strided, dilated windows), never by
calling portgrad (tests/conv_numpy.py).

Sizes are small (inputs under ~100 elements per example) so the finite-difference checks stay fast.
"""
from __future__ import annotations

import portgrad as pg
from conv_numpy import _tuple, conv_geometry, np_conv, np_deconv, np_pool
from layer_registry import LayerCase, Port, normal


# ----------------------------------------------------------------------------- cases
def _conv_case(cid, n, k, in_shape, stride=1, padding=0, dilation=1, groups=1, biases=True):
    nd = len(in_shape) - 1
    lo, out = conv_geometry(in_shape[1:], k, stride, dilation, padding)

    def ref(P, I):
        y = np_conv(I["Input"], P["Weights"], _tuple(stride, nd), _tuple(dilation, nd), lo, out, groups)
        if "Biases" in P:
            y = y + P["Biases"].reshape((1, -1) + (1,) * nd)
        return y

    return LayerCase(id=cid, make=lambda: pg.ConvolutionLayer(n, k, stride, padding, dilation, groups, biases,
                                                              input=in_shape),
                     ports={"Input": Port(tuple(in_shape), normal)}, ref=ref,
                     params=("Weights", "Biases") if biases else ("Weights",))


def _deconv_case(cid, n, k, in_shape, stride=1, padding=0, dilation=1, groups=1, biases=True, output_padding=0):
    nd = len(in_shape) - 1
    lo, out = conv_geometry(in_shape[1:], k, stride, dilation, padding, transposed=True,
                            output_padding=output_padding)

    def ref(P, I):
        y = np_deconv(I["Input"], P["Weights"], _tuple(stride, nd), _tuple(dilation, nd), lo, out, groups)
        if "Biases" in P:
            y = y + P["Biases"].reshape((1, -1) + (1,) * nd)
        return y

    return LayerCase(id=cid, make=lambda: pg.DeconvolutionLayer(n, k, stride, padding, dilation, groups, biases,
                                                                output_padding, input=in_shape),
                     ports={"Input": Port(tuple(in_shape), normal)}, ref=ref,
                     params=("Weights", "Biases") if biases else ("Weights",))


def _pool_case(cid, fn, k, in_shape, stride=1, padding=0):
    nd = len(in_shape) - 1
    lo, out = conv_geometry(in_shape[1:], k, stride, 1, padding)

    def ref(P, I):
        x = I["Input"]
        y = np_pool(x.reshape((-1,) + x.shape[2:]), fn, _tuple(k, nd), _tuple(stride, nd), lo, out)
        return y.reshape(x.shape[:2] + y.shape[1:])

    return LayerCase(id=cid, make=lambda: pg.PoolingLayer(k, stride, padding, fn, input=in_shape),
                     ports={"Input": Port(tuple(in_shape), normal)}, ref=ref)


CASES = [
    _conv_case("Conv-1D", 3, 3, (2, 7)),
    _conv_case("Conv-2D", 3, 3, (2, 5, 5)),
    _conv_case("Conv-3D", 2, 2, (2, 3, 4, 4)),
    _conv_case("Conv-2D-stride2", 2, 3, (2, 7, 7), stride=2),
    _conv_case("Conv-2D-stride-gt-kernel", 2, 2, (2, 7, 6), stride=3, padding=1),
    _conv_case("Conv-2D-dilation2", 2, 2, (2, 6, 5), dilation=2),
    _conv_case("Conv-2D-dilation3-perdim", 2, (2, 2), (2, 7, 5), dilation=(3, 1), stride=(1, 2)),
    _conv_case("Conv-2D-same-stride2", 2, 3, (2, 6, 5), stride=2, padding="Same"),
    _conv_case("Conv-1D-same-even-kernel", 2, 4, (2, 6), padding="Same"),
    _conv_case("Conv-2D-perside-padding", 2, (2, 3), (2, 5, 4), padding=((1, 0), (0, 2))),
    _conv_case("Conv-2D-groups2", 4, 3, (4, 5, 5), groups=2),
    _conv_case("Conv-2D-depthwise", 3, 3, (3, 5, 5), padding=1, groups=3),
    _conv_case("Conv-1D-depthwise-multiplier2", 4, 3, (2, 7), stride=2, padding=1, groups=2),
    _conv_case("Conv-2D-nobias", 2, 3, (2, 5, 5), biases=False),
    _conv_case("Conv-2D-pointwise", 2, 1, (3, 4, 4)),
    _conv_case("Conv-2D-1x1-stride2", 2, 1, (3, 5, 5), stride=2),
    _conv_case("Conv-3D-same-groups", 2, 3, (2, 3, 3, 4), padding="Same", groups=2),
    _deconv_case("Deconv-2D-stride2", 2, 3, (3, 3, 3), stride=2),
    _deconv_case("Deconv-2D-same-stride2", 2, 4, (2, 3, 3), stride=2, padding="Same"),
    _deconv_case("Deconv-2D-perside-crop", 2, 3, (2, 3, 4), stride=(2, 1), padding=((1, 0), (0, 1))),
    _deconv_case("Deconv-1D-dilation2", 2, 3, (2, 5), stride=2, padding=1, dilation=2),
    _deconv_case("Deconv-3D-stride2", 2, 2, (2, 2, 2, 3), stride=2),
    _deconv_case("Deconv-2D-groups2-nobias", 2, 2, (4, 3, 3), groups=2, biases=False),
    # output_padding within the crop (dimension 0) and past the full output (dimension 1: bias only)
    _deconv_case("Deconv-2D-output-padding", 2, 3, (2, 3, 3), stride=2, padding=((1, 1), (0, 0)),
                 output_padding=1),
    _deconv_case("Deconv-1D-output-padding-dilation3", 2, 2, (2, 4), stride=1, dilation=3, padding=1,
                 output_padding=2),
    _pool_case("Pool-Max-1D-stride2-pad1", "Max", 3, (2, 7), stride=2, padding=1),
    _pool_case("Pool-Max-2D-stride2", "Max", 2, (3, 5, 5), stride=2),
    _pool_case("Pool-Max-2D-same", "Max", 3, (2, 5, 4), stride=2, padding="Same"),
    _pool_case("Pool-Max-3D", "Max", 2, (2, 3, 4, 3)),
    _pool_case("Pool-Mean-1D", "Mean", 3, (2, 6)),
    _pool_case("Pool-Mean-2D-stride2-pad1", "Mean", 3, (2, 5, 6), stride=2, padding=1),
    _pool_case("Pool-Mean-3D-stride2-pad1", "Mean", 2, (1, 4, 4, 3), stride=2, padding=1),
    _pool_case("Pool-Total-1D-perside", "Total", 4, (3, 8), stride=3, padding=((2, 1),)),
    _pool_case("Pool-Total-2D-perdim", "Total", (2, 3), (2, 5, 5), stride=(1, 2), padding=((0, 1), (1, 1))),
    _pool_case("Pool-Total-3D-stride2", "Total", (1, 2, 2), (2, 3, 4, 4), stride=2),
]
