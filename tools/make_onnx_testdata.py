"""Exports small PyTorch models (an MLP with batch norm, LeNet, a ResNet block, a 1-D conv net, a
2-layer transformer encoder over token embeddings, a pre-norm encoder over float sequences, a
causal encoder layer with its attention mask, and a small vision transformer with a class token) to
ONNX for tests/test_onnx_import.py, with PyTorch's own outputs and gradients as the reference, so
the tests need no torch.

    python tools/make_onnx_testdata.py            # writes tests/data/onnx/
    python tools/make_onnx_testdata.py vit        # only these models (the dynamo exporter's files
                                                  # are not byte-identical from run to run)

Needs torch==2.13.0, onnx and onnxscript (the dynamo exporter). Each model is exported by both of
PyTorch's exporters (TorchScript: opsets 17, 18, 20; dynamo: 18, 20; and a dynamic-batch variant of
each at 18). `<model>.npz` holds the input, and PyTorch's outputs and gradients of the sum of the
outputs with respect to the input and to every parameter (in float32 and float64: the float64 model
is the float32 one's exact copy), keyed "y32", "dx64", "d64/<parameter name>", ..., and the
parameters' values ("p/<name>").

Batch-norm after a convolution is folded into it before export (both exporters fold it anyway, and
then the file's tensors are parameters PyTorch has gradients for); a batch norm after a linear layer
stays a BatchNormalization node.
"""
import io
import os
import warnings

import numpy as np
import onnx
import torch
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "onnx")


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2, self.fc3 = nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Linear(16, 12), nn.Linear(12, 3)

    def forward(self, x):
        return self.fc3(torch.sigmoid(self.fc2(nn.functional.gelu(self.bn(self.fc1(x))))))


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.utils.fusion.fuse_conv_bn_eval(nn.Conv2d(1, 4, 3, padding=1).eval(), _trained_bn(4))
        self.conv2, self.fc1, self.fc2 = nn.Conv2d(4, 8, 3), nn.Linear(8 * 2 * 2, 10), nn.Linear(10, 3)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.flatten(torch.relu(self.conv2(x)), 1)
        return torch.log_softmax(self.fc2(torch.tanh(self.fc1(x))), -1)


class ResBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        y = torch.relu(x + self.conv2(torch.relu(self.conv1(x))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class Conv1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv1d(2, 4, 5, stride=2), nn.Conv1d(4, 4, 3, padding=1), nn.Linear(24, 2)

    def forward(self, x):
        x = nn.functional.max_pool1d(torch.relu(self.conv1(x)), 2, stride=1)
        x = nn.functional.avg_pool1d(torch.tanh(self.conv2(x)), 2)
        return torch.softmax(self.fc(torch.flatten(x, 1)), -1)


class Transformer(nn.Module):
    """Token ids -> embedding + learned positions -> a 2-layer transformer encoder -> mean -> logits."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.pos = nn.Parameter(torch.randn(5, 8) * 0.5)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, activation="gelu")
        self.enc = _distinct_layers(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False))
        self.head = nn.Linear(8, 3)

    def forward(self, t):
        return self.head(self.enc(self.emb(t) + self.pos).mean(1))


class Encoder(nn.Module):
    """Float sequences (5, 6) -> a projection -> a 2-layer pre-norm encoder (ReLU) -> the first position."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 8)
        layer = nn.TransformerEncoderLayer(8, 4, 12, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = _distinct_layers(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.enc(self.proj(x))[:, 0])


class Causal(nn.Module):
    """A causal (masked) transformer encoder layer over float sequences (5, 8): the exporters build
    the mask with Trilu/Equal/Where, folded at import, and add it with its -inf entries."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.enc = _distinct_layers(nn.TransformerEncoder(layer, 1, enable_nested_tensor=False))
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(5))

    def forward(self, x):
        return self.enc(x, mask=self.mask, is_causal=True)


class ViT(nn.Module):
    """Images (1, 8, 8) -> 4x4 patches embedded by a strided convolution -> a class token (expanded
    to the batch and concatenated: the shape of cls.expand(x.shape[0], -1, -1) is computed from the
    input's) and learned positions -> an encoder layer -> the class token's logits."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(1, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.pos = nn.Parameter(torch.randn(1, 5, 8) * 0.5)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.enc = _distinct_layers(nn.TransformerEncoder(layer, 1, enable_nested_tensor=False))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), h], dim=1) + self.pos
        return self.head(self.enc(h)[:, 0])


def _distinct_layers(encoder):
    """TransformerEncoder's layers start as copies of one, and the exporters then store one tensor for
    all copies; a trained encoder's layers differ, and so do these (and the norms are not identities)."""
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return encoder


def _trained_bn(c):
    """A batch norm with running statistics and affine parameters away from their defaults."""
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn.eval()


MODELS = {"mlp": (Mlp, (3, 6)), "lenet": (LeNet, (3, 1, 8, 8)), "resblock": (ResBlock, (3, 3, 5, 5)),
          "conv1d": (Conv1d, (3, 2, 31)), "transformer": (Transformer, (3, 5)), "encoder": (Encoder, (3, 5, 6)),
          "causal": (Causal, (3, 5, 8)), "vit": (ViT, (3, 1, 8, 8))}
# (exporter, opset, dynamic batch)
EXPORTS = [("ts", 17, False), ("ts", 18, False), ("ts", 20, False), ("dynamo", 18, False), ("dynamo", 20, False),
           ("ts", 18, True), ("dynamo", 18, True)]


def reference(model, x):
    """PyTorch's outputs and gradients of sum(outputs), in float32 and float64."""
    ref = {"x": x.numpy()}
    for bits, dtype in ((32, torch.float32), (64, torch.float64)):
        m = type(model)().to(dtype)
        m.load_state_dict(model.state_dict())
        m.eval()
        real = x.is_floating_point()  # token ids have no gradient
        xi = x.detach().to(dtype).clone().requires_grad_() if real else x
        y = m(xi)
        y.sum().backward()
        ref[f"y{bits}"] = y.detach().numpy()
        if real:
            ref[f"dx{bits}"] = xi.grad.numpy()
        for name, p in m.named_parameters():
            ref[f"d{bits}/{name}"] = p.grad.numpy()
            if bits == 32:  # an exporter may fold a batch norm into a tensor of the same name
                ref[f"p/{name}"] = p.detach().numpy()
    return ref


def export(model, x, exporter, opset, dynamic):
    f = io.BytesIO()
    kwargs = {"opset_version": opset, "dynamo": exporter == "dynamo", "input_names": ["input"],
              "output_names": ["output"]}
    if dynamic and exporter == "dynamo":
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    elif dynamic:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), f, **kwargs)
    proto = onnx.load_from_string(f.getvalue())
    proto.doc_string = ""
    proto.producer_version = ""  # the files do not change with the exporter's patch version
    return proto


def main(only=()):
    os.makedirs(OUT, exist_ok=True)
    for name, (cls, shape) in MODELS.items():
        if only and name not in only:
            continue
        torch.manual_seed(sum(map(ord, name)))
        model = cls().eval()
        if name == "mlp":  # a trained-looking batch norm
            with torch.no_grad():
                model.bn.running_mean.uniform_(-0.5, 0.5)
                model.bn.running_var.uniform_(0.5, 2.0)
                model.bn.weight.uniform_(0.5, 1.5)
        x = torch.randint(0, 11, shape) if name == "transformer" else torch.randn(*shape)
        np.savez_compressed(os.path.join(OUT, f"{name}.npz"), **reference(model, x))
        for exporter, opset, dynamic in EXPORTS:
            if name == "vit" and exporter == "dynamo" and not dynamic:
                continue  # it folds cls.expand(3, -1, -1) into one (3, 1, 8) tensor: a batch of 3 only
            proto = export(model, x, exporter, opset, dynamic)
            version = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
            file = f"{name}-{exporter}-{opset}{'-dynamic' if dynamic else ''}.onnx"
            onnx.save(proto, os.path.join(OUT, file))
            print(f"{file}: opset {version}, {len(proto.graph.node)} nodes, "
                  f"{os.path.getsize(os.path.join(OUT, file))} bytes")


if __name__ == "__main__":
    import sys

    unknown = set(sys.argv[1:]) - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; known: {', '.join(MODELS)}")
    main(sys.argv[1:])
