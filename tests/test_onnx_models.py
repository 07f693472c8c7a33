"""advx.onnx_models: ONNX networks read into plain torch layers that bound propagation reads."""

from __future__ import annotations

import re
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx2torch")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import advx.certify  # noqa: E402
from advx.certify.graph import read_model  # noqa: E402
from advx.loading import ModelLoadError  # noqa: E402
from advx.models import InputNormalization, Normalized  # noqa: E402
from advx.onnx_models import SUPPORTED, OnnxModel, Reshape, UnsupportedOnnx, load_onnx  # noqa: E402
from advx.validate import AdvxError  # noqa: E402


def _seeded(build, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # the global RNG is left as it was
        torch.manual_seed(seed)
        return build().eval()


def _export(model: nn.Module, shape, path, dtype=torch.float32):
    """The legacy (TorchScript) exporter at opset 13, with a symbolic batch dimension."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its DeprecationWarning and tracer warnings
        torch.onnx.export(model, (torch.zeros(1, *shape, dtype=dtype),), str(path), dynamo=False, opset_version=13,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


def _graph(path, nodes, initializers=(), *, inputs=("N", 4), outputs=("N", 3), opset=13):
    """A hand-built ONNX file: input x, output y."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(inputs))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(outputs))],
                              [numpy_helper.from_array(np.asarray(v, dtype=np.float32 if v.dtype.kind == "f"
                                                                  else v.dtype), name) for name, v in initializers])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def _inputs(shape, n: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def _same_outputs(loaded: nn.Module, original: nn.Module, shape) -> None:
    x = _inputs(shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x), rtol=1e-5, atol=1e-5)


class _View(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)  # exported as Shape -> Gather -> Unsqueeze -> Concat -> Reshape


class _Unflatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), 1, 4, 4)


def _op_names(model, shape) -> list[str]:
    return [type(op).__name__ for op in read_model(model, shape)]


def test_an_mlp_reads_as_flatten_linear_relu_linear(tmp_path):
    net = _seeded(lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)))
    loaded = load_onnx(_export(net, (1, 4, 4), tmp_path / "mlp.onnx"))
    assert isinstance(loaded, OnnxModel) and loaded.input_shape == (1, 4, 4) and not loaded.training
    assert [type(m) for m in loaded.layers] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert torch.equal(loaded.layers[1].weight, net[1].weight) and torch.equal(loaded.layers[3].bias, net[3].bias)
    _same_outputs(loaded, net, (1, 4, 4))
    assert _op_names(loaded, loaded.input_shape) == ["Reshape", "Linear", "ReLU", "Linear"]


def test_a_cnn_with_pools_and_a_view_reads_and_its_shape_side_chain_is_dropped(tmp_path):
    net = _seeded(lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                        nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                                        _View(), nn.Linear(4, 3)))
    path = _export(net, (1, 8, 8), tmp_path / "cnn.onnx")
    assert "Shape" in [n.op_type for n in onnx.load(str(path)).graph.node]
    loaded = load_onnx(path)
    assert [type(m) for m in loaded.layers] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.ReLU, nn.AvgPool2d,
                                                nn.Flatten, nn.Linear]
    _same_outputs(loaded, net, (1, 8, 8))
    assert _op_names(loaded, (1, 8, 8)) == ["Conv", "ReLU", "MaxPool", "Conv", "ReLU", "Conv", "Reshape", "Linear"]


def test_a_reshape_to_a_fixed_shape_becomes_a_layer_bound_propagation_reads(tmp_path):
    net = _seeded(lambda: nn.Sequential(nn.Linear(16, 16), _Unflatten(), nn.Conv2d(1, 2, 3), nn.Flatten(),
                                        nn.Linear(8, 3)))
    loaded = load_onnx(_export(net, (16,), tmp_path / "unflatten.onnx"))
    assert isinstance(loaded.layers[1], Reshape) and loaded.layers[1].shape == (1, 4, 4)
    _same_outputs(loaded, net, (16,))
    assert _op_names(loaded, (16,)) == ["Linear", "Reshape", "Conv", "Reshape", "Linear"]


@pytest.mark.parametrize("mean, std, shape", [((0.1307,), (0.3081,), (1, 6, 6)),
                                              ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26), (3, 6, 6))])
def test_a_normalization_front_becomes_one_input_normalization_and_certifies_alike(mean, std, shape, tmp_path):
    net = _seeded(lambda: Normalized(nn.Sequential(nn.Conv2d(shape[0], 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                                                   nn.Linear(16, 3)), mean, std))
    path = _export(net, shape, tmp_path / "normalized.onnx")
    assert [n.op_type for n in onnx.load(str(path)).graph.node][:2] == ["Sub", "Div"]
    loaded = load_onnx(path)
    norm = loaded.layers[0]
    assert isinstance(norm, InputNormalization) and norm.mean.shape == (1, len(mean), 1, 1)
    torch.testing.assert_close(norm.mean.flatten(), torch.tensor(mean))
    torch.testing.assert_close(norm.std.flatten(), torch.tensor(std))
    _same_outputs(loaded, net, shape)
    x, y = _inputs(shape, n=4), torch.tensor([0, 1, 2, 0])
    ours, theirs = (advx.certify(m, x, y, eps=0.01, method="crown").margins for m in (loaded, net))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_a_scalar_normalization_of_a_vector_input_keeps_the_batch_shape(tmp_path):
    path = _graph(tmp_path / "vector.onnx", [
        helper.make_node("Sub", ["x", "m"], ["a"], name="sub"), helper.make_node("Mul", ["a", "s"], ["b"], name="mul"),
        helper.make_node("Gemm", ["b", "W", "c"], ["y"], name="fc", transB=1)],
        [("m", np.array(0.5)), ("s", np.array(2.0)), ("W", np.ones((3, 4))), ("c", np.zeros(3))])
    loaded = load_onnx(path)
    x = _inputs((4,))
    assert loaded.layers[0](x).shape == x.shape  # not broadcast to [1, 1, N, 4]
    torch.testing.assert_close(loaded(x), ((x - 0.5) * 2).sum(1, keepdim=True).expand(-1, 3))


@pytest.mark.parametrize("op, sign", [("Add", 1.0), ("Sub", -1.0)])
def test_a_hand_built_matmul_add_with_a_batch_of_one_is_one_linear(op, sign, tmp_path):
    rng = np.random.RandomState(0)
    W, b = rng.randn(4, 3).astype(np.float32), rng.randn(3).astype(np.float32)
    shape = np.array([1, 4], dtype=np.int64)  # VNN-COMP style: a fixed batch of 1, reshaped to [1, -1]
    path = _graph(tmp_path / "matmul.onnx", [
        helper.make_node("Reshape", ["x", "shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "W"], ["h"], name="matmul"),
        helper.make_node(op, ["h", "b"], ["y"], name="bias")],
        [("shape", shape), ("W", W), ("b", b)], inputs=(1, 1, 2, 2), outputs=(1, 3))
    loaded = load_onnx(path)
    assert loaded.input_shape == (1, 2, 2)
    assert [type(m) for m in loaded.layers] == [nn.Flatten, nn.Linear]
    assert torch.equal(loaded.layers[1].weight, torch.from_numpy(W.T))
    assert torch.equal(loaded.layers[1].bias, sign * torch.from_numpy(b))
    x = _inputs((1, 2, 2), n=5)  # any batch size, though the file says 1
    torch.testing.assert_close(loaded(x), x.reshape(5, 4) @ torch.from_numpy(W) + sign * torch.from_numpy(b))
    assert _op_names(loaded, (1, 2, 2)) == ["Reshape", "Linear"]


def test_a_gemm_whose_weights_come_from_a_constant_node_keeps_alpha_beta_and_trans_b(tmp_path):
    W, c = np.arange(12, dtype=np.float32).reshape(3, 4) / 10, np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    path = _graph(tmp_path / "gemm.onnx", [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(W, "Wc")),
        helper.make_node("Gemm", ["x", "W", "c"], ["y"], name="gemm", transB=1, alpha=2.0, beta=0.5)],
        [("c", c)])
    loaded = load_onnx(path)
    x = _inputs((4,))
    torch.testing.assert_close(loaded(x), 2 * x @ torch.from_numpy(W).T + 0.5 * torch.from_numpy(c))


def test_batch_norm_is_copied_and_double_weights_become_float32(tmp_path):
    def build():
        net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 3))
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        return net.double()
    net = _seeded(build)
    loaded = load_onnx(_export(net, (6,), tmp_path / "bn.onnx", dtype=torch.float64))
    assert [type(m) for m in loaded.layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert all(t.dtype == torch.float32 for t in [*loaded.parameters(), *loaded.buffers()] if t.is_floating_point())
    x = _inputs((6,))
    torch.testing.assert_close(loaded(x).double(), net(x.double()), rtol=1e-5, atol=1e-5)
    assert _op_names(loaded, (6,)) == ["Linear", "Scale", "ReLU", "Linear"]


def test_loading_leaves_the_global_rng_as_it_was(tmp_path):
    path = _export(_seeded(lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 3))), (1, 4, 4), tmp_path / "m.onnx")
    before = torch.random.get_rng_state()
    load_onnx(path)
    assert torch.equal(torch.random.get_rng_state(), before)


def _message(path, op, node, detail=""):
    return (f"cannot read {path}: the ONNX op '{op}' (node '{node}') is not supported{detail}; supported: "
            f"{', '.join(SUPPORTED)} in a chain (one input per layer)")


def test_an_unsupported_op_is_one_error_naming_it_and_its_node(tmp_path):
    path = _graph(tmp_path / "sigmoid.onnx", [helper.make_node("Sigmoid", ["x"], ["y"], name="/act/Sigmoid")],
                  outputs=("N", 4))
    with pytest.raises(UnsupportedOnnx, match=re.escape(_message(path, "Sigmoid", "/act/Sigmoid"))) as caught:
        load_onnx(path)
    assert isinstance(caught.value, AdvxError) and isinstance(caught.value, ValueError)
    exported = _export(_seeded(lambda: nn.Sequential(nn.Linear(4, 4), nn.Tanh())), (4,), tmp_path / "tanh.onnx")
    with pytest.raises(UnsupportedOnnx, match=re.escape(_message(exported, "Tanh", "/1/Tanh"))):
        load_onnx(exported)


@pytest.mark.parametrize("nodes, initializers, detail", [
    ([helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Add", ["x", "r"], ["y"], name="res")],
     [], " here: it combines several tensors or branches off the chain"),
    ([helper.make_node("Add", ["x", "x"], ["y"], name="res")], [], " with both operands computed from the input"),
    ([helper.make_node("Mul", ["x", "c"], ["y"], name="res")], [("c", np.array(-1.0))],
     " with the input multiplied by a number <= 0 (not a normalization)"),
    ([helper.make_node("Div", ["c", "x"], ["y"], name="res")], [("c", np.array(2.0))],
     " when it divides a constant by the input"),
    ([helper.make_node("Sub", ["x", "c"], ["y"], name="res")], [("c", np.array([[0.1, 0.2, 0.3, 0.4]]))], ""),
])
def test_an_op_used_outside_the_chain_or_as_no_normalization_is_refused(nodes, initializers, detail, tmp_path):
    path = _graph(tmp_path / "m.onnx", nodes, initializers, inputs=("N", 1, 4) if not detail else ("N", 4),
                  outputs=("N", 1, 4) if not detail else ("N", 4))
    detail = detail or (" by a constant that varies within a channel (only a per-channel or scalar "
                        "normalization is)")
    with pytest.raises(UnsupportedOnnx, match=re.escape(_message(path, nodes[-1].op_type, "res", detail))):
        load_onnx(path)


def test_an_opset_onnx2torch_cannot_convert_names_the_op_and_its_version(tmp_path):
    path = _graph(tmp_path / "opset20.onnx", [helper.make_node("Reshape", ["x", "s"], ["y"], name="node_view")],
                  [("s", np.array([-1, 4], dtype=np.int64))], outputs=("N", 4), opset=20)
    with pytest.raises(UnsupportedOnnx, match=re.escape(
            f"cannot read {path}: onnx2torch has no converter for the ONNX op 'Reshape' of version 19 (node "
            f"'node_view', model opset 20); export the model with an older opset, e.g. torch.onnx.export(..., "
            f"opset_version=13, dynamo=False)")):
        load_onnx(path)


def test_files_that_are_not_onnx_models_are_one_error_naming_the_path(tmp_path):
    text, empty = tmp_path / "notes.onnx", tmp_path / "empty.onnx"
    text.write_text("not a model\n")
    empty.write_bytes(b"")
    for path, message in [(tmp_path / "missing.onnx", f"model: no file at {tmp_path / 'missing.onnx'}"),
                          (tmp_path, f"model: {tmp_path} is a folder, expected an ONNX file"),
                          (text, f"model: {text} is not an ONNX model (DecodeError: "),
                          (empty, f"model: {empty} is not an ONNX model (it holds no graph)")]:
        with pytest.raises(ModelLoadError, match="^" + re.escape(message)):
            load_onnx(path)


def test_without_onnx2torch_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # import onnx2torch now raises ImportError
    with pytest.raises(ModelLoadError, match=re.escape("pip install 'advx[onnx]'")):
        load_onnx(tmp_path / "any.onnx")
