"""Read a PyTorch model into the chain of ops that bound propagation walks.

``torch.fx`` traces the model's ``forward`` (so any ``nn.Module`` whose graph is a chain
works, not only ``nn.Sequential``); one forward pass on an input of zeros records every
node's shape. Anything outside ``SUPPORTED`` (a residual ``+``, a sigmoid, an attention
block) is one clear error naming it.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from advx.certify import ops, pooling
from advx.certify.ops import pair
from advx.loading import Exported
from advx.models import InputNormalization
from advx.modes import device_of, frozen, weight_dtype
from advx.validate import AdvxError

SUPPORTED = ("Conv2d", "Linear", "ReLU", "Flatten / view / reshape", "AvgPool2d", "MaxPool2d",
             "BatchNorm1d/2d (eval mode)", "Dropout (eval mode)", "Identity", "advx.models.Normalized")


class UnsupportedModel(AdvxError, ValueError):
    """The model holds an operation that bound propagation does not know."""


def _unsupported(what: str, extra: str = "") -> UnsupportedModel:
    return UnsupportedModel(f"cannot certify this model: {what} is not supported{extra}; "
                            f"supported: {', '.join(SUPPORTED)} in a chain (one input per layer)")


_RESHAPES = {"flatten", "view", "reshape", "contiguous"}
_SKIPS = (nn.Dropout, nn.Identity)


def read_model(model: nn.Module, input_shape) -> list[ops.Op]:
    """The chain of ``advx.certify.ops`` computing ``model`` on one sample of ``input_shape``
    (e.g. (1, 28, 28)) as in eval mode (BatchNorm with its running statistics, no dropout).
    The ops hold the model's own parameters, so the chain follows later weight steps."""
    if any(isinstance(m, Exported) for m in model.modules()):
        raise UnsupportedModel("cannot certify an exported program (torch.export, .pt2): its graph holds aten "
                               "operations, not a chain of modules; certify the module itself (--model "
                               "MODULE:NAME --weights FILE)")
    try:
        graph = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as error:  # data-dependent control flow and the like
        raise UnsupportedModel(f"cannot certify this model: torch.fx could not trace its forward "
                               f"({type(error).__name__}: {error})") from None
    device, dtype = device_of(model), weight_dtype(model)
    try:  # frozen: in train mode the shape pass would move BatchNorm's running statistics
        with frozen(graph), torch.no_grad(), redirect_stderr(io.StringIO()):  # ShapeProp prints tracebacks
            ShapeProp(graph).propagate(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    except Exception as error:
        cause = error.__cause__ or error  # ShapeProp wraps the model's own error
        lines = str(cause).strip().splitlines() or [""]
        raise UnsupportedModel(f"cannot certify this model: it does not run on one input of shape "
                               f"{list(input_shape)} ({type(cause).__name__}: {lines[0][:200]})") from None
    modules = dict(graph.named_modules())
    chain: list[ops.Op] = []
    current = None  # the node whose value flows through the chain
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            current = node
            continue
        if node.op == "output":
            if node.args[0] is not current:
                raise _unsupported("an output other than the last layer's (a tuple, a dict)")
            break
        if node.op == "get_attr" or _is_size(node):
            continue  # x.size(0) in view(x.size(0), -1): the reshape reads its shape itself
        tensor_args = [a for a in node.all_input_nodes if not _is_size(a) and a.op != "get_attr"]
        if len(tensor_args) != 1 or tensor_args[0] is not current:
            raise _unsupported(f"{_describe(node, modules)} (it combines several tensors or branches "
                               f"off the chain)")
        node.meta["device"] = device
        op = _op_of(node, modules, _shape(tensor_args[0]), _shape(node))
        if op is not None:
            chain.append(op)
        current = node
    return chain


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with an input normalization read as one layer (not a sub and a div)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, InputNormalization) or super().is_leaf_module(m, qualname)


def _is_size(node) -> bool:
    return node.op == "call_method" and node.target in ("size", "dim") or (
        node.op == "call_function" and node.target is getattr and node.args[1] == "shape")


def _shape(node) -> tuple:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise _unsupported(f"the node {node.name!r} (it does not return one tensor)")
    return tuple(meta.shape[1:])


def _describe(node, modules) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} ({node.target})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{target} ({node.name})"


def _op_of(node, modules, in_shape, out_shape):
    if node.op == "call_module":
        return _module_op(modules[node.target], node, in_shape, out_shape)
    target = node.target
    if node.op == "call_method" and target in _RESHAPES or target in (torch.flatten, torch.reshape):
        return ops.Reshape(in_shape, out_shape)
    if target in (F.relu, torch.relu) or (node.op == "call_method" and target == "relu"):
        return ops.ReLU(in_shape, out_shape)
    if target is F.dropout:  # certified as in eval mode, where dropout is the identity
        return None
    raise _unsupported(_describe(node, modules))  # a sigmoid, an x * 2, a torch.cat, ...


def _module_op(module, node, in_shape, out_shape):
    if isinstance(module, _SKIPS):
        return None
    if isinstance(module, nn.ReLU):
        return ops.ReLU(in_shape, out_shape)
    if isinstance(module, nn.Flatten):
        return ops.Reshape(in_shape, out_shape)
    if isinstance(module, nn.Linear):
        return ops.Linear(module.weight, module.bias, in_shape, out_shape)
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise _unsupported(f"Conv2d with padding_mode={module.padding_mode!r} ({node.target})")
        padding = _explicit_padding(module, in_shape, out_shape)
        return ops.Conv(module.weight, module.bias, module.stride, padding, module.dilation, module.groups,
                        in_shape, out_shape)
    if isinstance(module, InputNormalization):
        return ops.Scale(module, in_shape)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if module.running_mean is None:
            raise _unsupported(f"BatchNorm without running statistics ({node.target})")
        return ops.Scale(module, in_shape)
    if isinstance(module, nn.AvgPool2d):
        return _avg_pool(module, node, in_shape, out_shape)
    if isinstance(module, nn.MaxPool2d):
        if pair(module.padding) != (0, 0) or pair(module.dilation) != (1, 1) or module.ceil_mode:
            raise _unsupported(f"MaxPool2d with padding, dilation or ceil_mode ({node.target})")
        return pooling.MaxPool(pair(module.kernel_size), pair(module.stride or module.kernel_size), in_shape, out_shape)
    raise _unsupported(_describe(node, modules={node.target: module}))


def _explicit_padding(conv: nn.Conv2d, in_shape, out_shape):
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":  # symmetric only: odd effective kernels
        k = [d * (s - 1) for d, s in zip(conv.dilation, conv.kernel_size)]
        if any(v % 2 for v in k):
            raise _unsupported("Conv2d with padding='same' and an even kernel")
        return tuple(v // 2 for v in k)
    return conv.padding


def _avg_pool(module: nn.AvgPool2d, node, in_shape, out_shape):
    kernel, stride, padding = pair(module.kernel_size), pair(module.stride or module.kernel_size), pair(module.padding)
    if module.ceil_mode or (padding != (0, 0) and not module.count_include_pad) or module.divisor_override:
        raise _unsupported(f"AvgPool2d with ceil_mode, divisor_override or count_include_pad=False "
                           f"({node.target})")
    channels = in_shape[0]
    weight = torch.full((channels, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), device=node.meta["device"])
    return ops.Conv(weight, None, stride, padding, (1, 1), channels, in_shape, out_shape, name="AvgPool2d")
