"""Exact oracle: on bias-free ReLU networks, epsilon-LRP with a vanishing epsilon is gradient x input."""
import pytest
import torch
import torch.nn as nn

from dynamiclrp import LRP, LRPConfig


def _mlp():
    return nn.Sequential(nn.Linear(10, 32, bias=False), nn.ReLU(), nn.Linear(32, 32, bias=False), nn.ReLU(),
                         nn.Linear(32, 5, bias=False))


def _cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 16, bias=False), nn.ReLU(), nn.Linear(16, 4, bias=False),
    )


@pytest.mark.parametrize("make,shape", [(_mlp, (4, 10)), (_cnn, (3, 3, 16, 16))], ids=["mlp", "cnn"])
def test_epsilon_equals_gradient_times_input(make, shape):
    model = make().double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    target = torch.tensor([i % 4 for i in range(shape[0])])
    rel = LRP(model, LRPConfig(epsilon=1e-12)).attribute(x, target=target)

    xg = x.clone().requires_grad_()
    model(xg).gather(1, target[:, None]).sum().backward()
    expected = xg.grad * x
    err = (rel - expected).norm() / expected.norm()
    assert err < 1e-5, err
    # and it is not trivially zero
    assert expected.abs().sum() > 0


def test_oracle_with_float32_and_default_epsilon_is_close():
    model = _mlp().eval()
    x = torch.randn(2, 10)
    rel = LRP(model).attribute(x, target=1)
    xg = x.clone().requires_grad_()
    model(xg)[:, 1].sum().backward()
    assert torch.allclose(rel, xg.grad * x, rtol=1e-3, atol=1e-5)
