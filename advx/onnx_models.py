"""ONNX networks (VNN-COMP's MNIST and CIFAR benchmarks, a user's export) as plain torch modules.

``load_onnx(path)`` converts the file with ``onnx2torch``, then reads its ``torch.fx`` graph (a
chain) into an ``nn.Sequential`` that ``advx.certify`` reads: ``Gemm``, ``MatMul`` (+ ``Add``) ->
``nn.Linear``; ``Conv`` -> ``nn.Conv2d``; ``Flatten``/``Reshape`` -> ``nn.Flatten``/``Reshape``; a run
of ``Sub``/``Div``/``Mul``/``Add`` by constants -> one ``InputNormalization``. Anything else is one
``UnsupportedOnnx`` naming the ONNX op and node; the layers are checked against onnx2torch's output.

    >>> model = load_onnx("mnist-net_256x2.onnx")      # an OnnxModel, an nn.Module
    >>> model.input_shape, model(torch.rand(5, *model.input_shape)).shape
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import torch
from torch import fx, nn

from advx.loading import ModelLoadError
from advx.models import InputNormalization

SUPPORTED = ("Gemm", "MatMul+Add", "Conv", "Relu", "Flatten", "Reshape", "Sub/Div/Mul/Add by a constant",
             "AveragePool", "MaxPool", "BatchNormalization", "Dropout/Identity")
_COPIED = {"Conv": nn.Conv2d, "AveragePool": nn.AvgPool2d, "MaxPool": nn.MaxPool2d,
           "BatchNormalization": (nn.BatchNorm1d, nn.BatchNorm2d)}  # onnx2torch's module, copied as it is
_RESHAPES = {"Flatten", "Reshape", "Squeeze", "Unsqueeze"}
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div"}
_SIDE = {"Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice"}  # shape arithmetic
_KNOWN = {"Gemm", "MatMul", "Relu", "Dropout", "Identity"} | set(_COPIED) | _RESHAPES | _ELEMENTWISE | _SIDE


class UnsupportedOnnx(ModelLoadError):
    """The ONNX file holds an op (or a use of one) that advx cannot read into torch layers."""


class Reshape(nn.Module):
    """``x.reshape(batch, *shape)``: an ONNX ``Reshape`` to a fixed per-sample ``shape``."""

    def __init__(self, shape) -> None:
        super().__init__()
        self.shape = tuple(int(v) for v in shape)

    def forward(self, x):
        return x.reshape(x.size(0), *self.shape)  # size(0): bound propagation's reader skips it


class OnnxModel(nn.Module):
    """An ONNX network as ``layers`` (an ``nn.Sequential``): [N, *input_shape] -> [N, K] for any N;
    ``input_shape`` has no batch dimension (e.g. (1, 28, 28) or (784,)); ``source``: the file."""

    def __init__(self, layers: nn.Sequential, input_shape, source: str = "") -> None:
        super().__init__()
        self.layers, self.input_shape, self.source = layers, tuple(input_shape), source

    def forward(self, x):
        return self.layers(x)


def load_onnx(path: str | os.PathLike) -> OnnxModel:
    """The ONNX network in ``path`` as an ``OnnxModel`` (eval mode, float32 weights). Raises
    ``ModelLoadError`` for a missing or unreadable file, ``UnsupportedOnnx`` for an op outside
    ``SUPPORTED`` (or off the chain: a branch, a residual add)."""
    path = Path(path)
    try:
        import onnx
        from onnx2torch import convert
    except ImportError as err:
        raise ModelLoadError(f"reading ONNX models needs onnx and onnx2torch ({err}): "
                             f"pip install 'advx[onnx]'") from None
    proto, input_shape, batch, dtype = _read(path, onnx)
    names = _node_names(proto, path)
    graph = _convert(proto, path, convert).eval()  # in training mode, dropout and batch norm would act
    x, values = _run(graph, path, input_shape, batch, dtype)
    model = OnnxModel(nn.Sequential(*_Reader(path, graph, names, values).layers()), input_shape, str(path)).eval()
    with torch.no_grad():  # a guard against a misread: the layers must give onnx2torch's output
        expected, got = values[None].double(), model(x).double()
    scale = max(1.0, expected.abs().max().item())
    if expected.shape != got.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * scale):
        raise ModelLoadError(f"cannot read {path}: the torch layers read from it do not reproduce onnx2torch's "
                             f"output; an ONNX construct that advx misreads: please report it")
    return model


def _read(path: Path, onnx):
    """The ModelProto, one input's shape (no batch dimension), the batch size (None: symbolic), the dtype."""
    if not path.is_file():
        raise ModelLoadError(f"model: {path} is a folder, expected an ONNX file" if path.is_dir()
                             else f"model: no file at {path}")
    try:
        proto = onnx.load(str(path))
    except Exception as err:  # DecodeError, a truncated file, ...
        raise ModelLoadError(f"model: {path} is not an ONNX model ({type(err).__name__}: "
                             f"{str(err).strip()[:200]})") from None
    if not proto.graph.node or not proto.graph.input or not proto.opset_import:
        raise ModelLoadError(f"model: {path} is not an ONNX model (it holds no graph)")
    constants = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in constants]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise UnsupportedOnnx(f"cannot read {path}: it has {len(inputs)} inputs and {len(proto.graph.output)} "
                              f"outputs, expected one of each")
    kind = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in kind.shape.dim]
    if len(dims) < 2 or None in dims[1:] or dims[0] not in (None, 1) or min(dims[1:]) < 1:
        shown = ["?" if d is None else d for d in dims]
        raise UnsupportedOnnx(f"cannot read {path}: its input {inputs[0].name!r} has shape {shown}, expected "
                              f"[batch, ...] with a symbolic or 1 batch dimension and fixed sizes after it")
    dtype = {onnx.TensorProto.DOUBLE: torch.float64, onnx.TensorProto.FLOAT16: torch.float16}.get(kind.elem_type)
    return proto, tuple(dims[1:]), dims[0], dtype or torch.float32


def _node_names(proto, path) -> dict[str, tuple[str, str]]:
    """onnx2torch's module name of each node -> (ONNX op type, node name); unknown ops refused."""
    from onnx2torch.onnx_graph import OnnxGraph
    for node in proto.graph.node:
        if node.op_type not in _KNOWN or node.domain not in ("", "ai.onnx"):
            raise _unsupported(path, node.op_type, node.name)
    return {name: (n.operation_type, n.name or name) for name, n in OnnxGraph(proto.graph).nodes.items()}


def _unsupported(path, op_type: str, node_name: str, detail: str = "") -> UnsupportedOnnx:
    return UnsupportedOnnx(f"cannot read {path}: the ONNX op {op_type!r} (node {node_name!r}) is not supported"
                           f"{detail}; supported: {', '.join(SUPPORTED)} in a chain (one input per layer)")


def _convert(proto, path: Path, convert) -> fx.GraphModule:
    try:
        with torch.random.fork_rng(devices=[]):  # onnx2torch builds layers with a random init, then fills them
            return convert(proto)
    except NotImplementedError as err:
        found = re.search(r"operation_type='(\w+)', version=(\d+)", str(err))
        if found is None:
            raise UnsupportedOnnx(f"cannot read {path}: onnx2torch cannot convert it: {err}") from None
        op_type, version = found.groups()  # onnx2torch converts in order: the first node of this type failed
        node = next((n.name for n in proto.graph.node if n.op_type == op_type), "")
        opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        raise UnsupportedOnnx(f"cannot read {path}: onnx2torch has no converter for the ONNX op {op_type!r} of "
                              f"version {version} (node {node!r}, model opset {opset}); export the model with an "
                              f"older opset, e.g. torch.onnx.export(..., opset_version=13, dynamo=False)") from None
    except Exception as err:
        raise ModelLoadError(f"model: onnx2torch could not convert {path} ({type(err).__name__}: "
                             f"{str(err).strip()[:200]})") from None


def _run(graph, path, input_shape, batch, dtype):
    """A seeded input in [0, 1] and every node's value on it, by node name (the output's under
    None): a batch of 2 where the batch size is free (a Reshape to [1, -1] still runs on 1)."""
    for size in (2, 1) if batch is None else (batch,):
        x = torch.rand(size, *input_shape, generator=torch.Generator().manual_seed(0))
        try:
            with torch.no_grad():
                run = fx.Interpreter(graph, garbage_collect_values=False)
                output = run.run(x.to(dtype))
            return x, {node.name: value for node, value in run.env.items()} | {None: output}
        except Exception as err:
            error = err
    raise ModelLoadError(f"model: {path} as onnx2torch converts it does not run on an input of shape "
                         f"{[size, *input_shape]} ({type(error).__name__}: {str(error).strip()[:200]})")


class _Reader:
    """Walks the converted graph node by node and builds the torch layers of its chain."""

    def __init__(self, path, graph: fx.GraphModule, names, values) -> None:
        self.path, self.names, self.values, self.graph = path, names, values, graph
        self.modules, self.out = dict(graph.named_modules()), []
        self.affine = None  # pending elementwise x * scale + shift: (scale, shift, first node)

    def layers(self) -> list[nn.Module]:
        current = next(iter(self.graph.graph.nodes))  # the input (onnx2torch puts it first)
        self.live, shapes = {current}, set()  # live: depend on the input; shapes: only compute a reshape's shape
        for node in self.graph.graph.nodes:
            inputs = [a for a in node.all_input_nodes if a in self.live]
            if node.op == "output":
                if inputs != [current]:
                    raise UnsupportedOnnx(f"cannot read {self.path}: its output is not the last layer's (one tensor)")
                break
            if not inputs:
                continue  # the input, a constant, arithmetic on constants (read where it is used)
            self.live.add(node)
            op_type, data = self.names.get(node.target, ("",))[0], [a for a in inputs if a not in shapes]
            if node.op != "call_module":
                raise self.error(node)
            if op_type == "Shape" or (op_type in _SIDE and not data):
                shapes.add(node)
            elif data != [current] or (shapes & set(inputs) and op_type != "Reshape"):
                raise self.error(node, " here: it combines several tensors or branches off the chain")
            else:
                self.read(node, op_type, self.modules[node.target])
                current = node
        self.flush()
        return self.out

    def error(self, node, detail: str = "") -> UnsupportedOnnx:
        op_type, name = self.names.get(node.target, (str(node.target), node.name))
        return _unsupported(self.path, op_type, name, detail)

    def constant(self, node, arg) -> torch.Tensor:
        """The value of ``arg``, which must not depend on the input, in float64."""
        if not isinstance(arg, fx.Node):
            return torch.as_tensor(arg, dtype=torch.float64)
        if arg in self.live:
            raise self.error(node, " with both operands computed from the input")
        return self.values[arg.name].detach().double()

    def read(self, node, op_type: str, module: nn.Module) -> None:
        if op_type in _ELEMENTWISE:
            return self.elementwise(node, op_type)
        self.flush()
        if op_type == "Relu":
            self.out.append(nn.ReLU())
        elif op_type in _RESHAPES:
            before, after = self.values[node.args[0].name].shape, self.values[node.name].shape
            if len(after) < 2 or after[0] != before[0]:
                raise self.error(node, " when it changes the batch dimension")
            self.out.append(nn.Flatten() if len(after) == 2 else Reshape(after[1:]))
        elif op_type == "Gemm" and isinstance(module, nn.Linear):
            self.out.append(_linear(module.weight.detach(), module.bias))
        elif op_type == "Gemm":  # onnx2torch's OnnxGemm: B not an initializer, or a 2-D C
            if module.trans_a or len(node.args) < 2:
                raise self.error(node, " with transA=1")
            weight = self.constant(node, node.args[1]) * module.alpha
            weight = weight if module.trans_b else weight.T
            bias = self.constant(node, node.args[2]) * module.beta if len(node.args) > 2 else torch.zeros(1)
            if bias.dim() > 2 or bias.numel() not in (1, weight.shape[0]):
                raise self.error(node, f" with a bias C of shape {list(bias.shape)}")
            self.out.append(_linear(weight, bias.reshape(-1).expand(weight.shape[0])))
        elif op_type == "MatMul":
            weight = self.constant(node, node.args[1])
            if node.args[0] not in self.live or self.values[node.args[0].name].dim() != 2 or weight.dim() != 2:
                raise self.error(node, " other than [batch, n] @ a constant [n, m]")
            self.out.append(_linear(weight.T, None))
        elif op_type in _COPIED:
            if not isinstance(module, _COPIED[op_type]):  # padded by a separate module, 1-D/3-D, or not constant
                raise self.error(node, f" as onnx2torch converts it here ({type(module).__name__}: asymmetric "
                                       f"padding, 1-D or 3-D, or statistics that are not constants)")
            self.out.append(copy.deepcopy(module).float().eval())
        elif op_type not in ("Dropout", "Identity"):
            raise self.error(node)

    def elementwise(self, node, op_type: str) -> None:
        """``x op c`` (or ``c op x``) with a constant ``c``: joined to a Linear's bias just
        before, else to the pending ``x * scale + shift`` that ``flush`` turns into a layer."""
        x, c = node.args[:2]
        swapped = x not in self.live
        x, c = (c, x) if swapped else (x, c)
        if op_type == "Div" and swapped:
            raise self.error(node, " when it divides a constant by the input")
        shape, c = tuple(self.values[x.name].shape[1:]), self.constant(node, c)
        if c.dim() > len(shape) + 1 or (c.dim() == len(shape) + 1 and c.shape[0] != 1) \
                or tuple(self.values[node.name].shape[1:]) != shape:
            raise self.error(node, f" with a constant of shape {list(c.shape)} on inputs of shape {list(shape)}")
        c = torch.broadcast_to(c.reshape(c.shape[1:]) if c.dim() == len(shape) + 1 else c, shape)
        if self.affine is None and op_type in ("Add", "Sub") and not swapped and self.out \
                and isinstance(self.out[-1], nn.Linear):
            with torch.no_grad():  # MatMul + Add, Gemm + Sub: the constant joins the bias
                self.out[-1].bias += (c if op_type == "Add" else -c).float()
            return
        scale, shift, first = self.affine or (torch.ones(shape, dtype=torch.float64),
                                              torch.zeros(shape, dtype=torch.float64), node)
        if op_type == "Add":
            shift = shift + c
        elif op_type == "Sub":
            scale, shift = (-scale, c - shift) if swapped else (scale, shift - c)
        else:
            factor = c if op_type == "Mul" else 1.0 / c
            scale, shift = scale * factor, shift * factor
        self.affine = (scale, shift, first)

    def flush(self) -> None:
        """The pending elementwise ops as one ``InputNormalization``: per channel (constant
        over all but the first dimension) with a scale > 0, or one clear error."""
        if self.affine is None:
            return
        (scale, shift, first), self.affine = self.affine, None
        s, t = scale.reshape(scale.shape[0], -1), shift.reshape(shift.shape[0], -1)
        if not ((s == s[:, :1]).all() and (t == t[:, :1]).all()):
            raise self.error(first, " by a constant that varies within a channel (only a per-channel or "
                                    "scalar normalization is)")
        s, t = s[:, 0], t[:, 0]
        s, t = (s[:1], t[:1]) if (s == s[0]).all() and (t == t[0]).all() else (s, t)  # one for all
        if not ((s > 0) & torch.isfinite(s)).all():
            raise self.error(first, " with the input multiplied by a number <= 0 (not a normalization)")
        norm = InputNormalization((-t / s).tolist(), (1.0 / s).tolist())
        view = (1, -1) + (1,) * (scale.dim() - 1)  # [1, C, 1, 1] for images, [1, C] for vectors
        norm.mean, norm.std = norm.mean.reshape(view), norm.std.reshape(view)
        self.out.append(norm)


def _linear(weight: torch.Tensor, bias) -> nn.Linear:
    """An ``nn.Linear`` holding float32 copies of ``weight`` [out, in] and ``bias`` [out] (zeros if None)."""
    layer = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0])  # no draw from the global RNG
    with torch.no_grad():
        layer.weight.copy_(weight.float())
        layer.bias.copy_(torch.zeros(weight.shape[0]) if bias is None else bias.detach().float())
    return layer
