"""``advx verify MODEL.onnx PROPERTY.vnnlib``: answers checked against an exact MILP, the
result file's format, and one clear line for every bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from advx.cli import main
from advx.vnnlib import write_vnnlib

pytest.importorskip("onnx2torch")
exact = pytest.importorskip("exact")


def mlp(seed: int = 1) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Flatten(), nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        for m in net.modules():
            if isinstance(m, nn.Linear):
                nn.init.uniform_(m.bias, -0.3, 0.3)
        return net.eval()


def export(net: nn.Module, path, shape=(1, 6)) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(*shape),), str(path), dynamo=False, opset_version=13)


@pytest.fixture(scope="module")
def onnx_mlp(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "mlp.onnx"
    net = mlp()
    export(net, path)
    return net, path


def read_result(path):
    lines = path.read_text().splitlines()
    values = {}
    for line in lines[1:]:
        name, value = line.strip(" ()").split()
        values[name] = float(value)
    return lines[0], values


@pytest.mark.parametrize("seed", range(6))
def test_every_answer_agrees_with_the_exact_minimum(onnx_mlp, tmp_path, capsys, seed):
    net, path = onnx_mlp
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, generator=g)
    eps = (0.02, 0.08, 0.15, 0.3, 0.5, 0.8)[seed]
    with torch.no_grad():
        label = int(net(x[None]).argmax())
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    write_vnnlib(tmp_path / "p.vnnlib", lo, hi, label, 4)
    truth = min(exact.minimum(net, lo, hi, torch.eye(4)[label] - torch.eye(4)[j])[0] for j in range(4) if j != label)
    code = main(["verify", str(path), str(tmp_path / "p.vnnlib"), "--timeout", "20", "--out", str(tmp_path / "r.txt")])
    assert code == 0
    result, values = read_result(tmp_path / "r.txt")
    assert result == capsys.readouterr().out.split()[0]
    if result == "unsat":
        assert truth > 0
    elif result == "sat":
        assert truth <= 1e-6
        point = torch.tensor([values[f"X_{i}"] for i in range(6)])
        outputs = torch.tensor([values[f"Y_{j}"] for j in range(4)])
        assert (point >= lo).all() and (point <= hi).all()
        with torch.no_grad():
            assert torch.allclose(net(point[None])[0], outputs, atol=1e-5)
        assert outputs.argmax() != label or outputs.topk(2).values.diff().abs() == 0
    else:
        pytest.fail(f"no answer on a 32-neuron network: {result}")


def test_a_convolutional_network_with_a_normalisation_is_verified(tmp_path, capsys):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        inner = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 3))
    from advx.models import Normalized

    net = Normalized(inner, mean=0.5, std=0.25).eval()
    export(net, tmp_path / "cnn.onnx", shape=(1, 1, 8, 8))
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        label = int(net(x).argmax())
    write_vnnlib(tmp_path / "p.vnnlib", (x - 0.001).clamp(0, 1).flatten(), (x + 0.001).clamp(0, 1).flatten(), label, 3)
    assert main(["verify", str(tmp_path / "cnn.onnx"), str(tmp_path / "p.vnnlib"), "--timeout", "10"]) == 0
    assert capsys.readouterr().out.startswith("unsat")


def test_bad_input_is_one_line(onnx_mlp, tmp_path, capsys):
    net, path = onnx_mlp
    write_vnnlib(tmp_path / "p.vnnlib", torch.zeros(6), torch.ones(6), 0, 4)
    cases = [
        (["--timeout", "0"], "--timeout must be > 0 seconds, got 0"),
        (["--milp", "1"], "--milp must be a share of --timeout in [0, 1), got 1"),
        ([], None),  # the control: the same files answer
    ]
    for extra, message in cases:
        code = main(["verify", str(path), str(tmp_path / "p.vnnlib"), "--timeout", "5", *extra])
        captured = capsys.readouterr()
        if message is None:
            assert code == 0 and captured.out.split()[0] in ("sat", "unsat", "timeout")
        else:
            assert code == 2 and message in captured.err and captured.err.count("\n") == 1
    write_vnnlib(tmp_path / "wide.vnnlib", torch.zeros(7), torch.ones(7), 0, 4)  # 7 inputs for a 6-input network
    assert main(["verify", str(path), str(tmp_path / "wide.vnnlib")]) == 2
    err = capsys.readouterr().err
    assert "X_6" in err and err.count("\n") == 1
    (tmp_path / "not.onnx").write_text("hello")
    assert main(["verify", str(tmp_path / "not.onnx"), str(tmp_path / "p.vnnlib")]) == 2
    err = capsys.readouterr().err
    assert "not.onnx" in err and err.count("\n") == 1
    sigmoid = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.Sigmoid(), nn.Linear(4, 4)).eval()
    export(sigmoid, tmp_path / "sigmoid.onnx")
    assert main(["verify", str(tmp_path / "sigmoid.onnx"), str(tmp_path / "p.vnnlib")]) == 2
    err = capsys.readouterr().err
    assert "Sigmoid" in err and err.count("\n") == 1
