"""Where our rules coincide with Zennit's (epsilon and generalised gamma on Linear/Conv, pass-through ReLU,
winner-takes-all max pooling), the relevances must agree to 1e-4."""
import pytest
import torch
import torch.nn as nn
from zennit.attribution import Gradient
from zennit.composites import LayerMapComposite
from zennit.rules import Epsilon, Gamma, Pass, ZPlus
from zennit.types import Activation, Convolution, Linear

from dynamiclrp import LRP, LRPConfig


def _vgg_like():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 6),
    )


def _mlp():
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 6))


def _zennit(model, composite, x, target):
    onehot = torch.nn.functional.one_hot(target, 6).to(x.dtype)
    with Gradient(model=model, composite=composite) as attributor:
        _, rel = attributor(x, attr_output=lambda out: out * onehot)
    return rel


def _randomize_biases(model):
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("make,shape", [(_vgg_like, (3, 3, 16, 16)), (_mlp, (5, 12))], ids=["vgg_like", "mlp"])
@pytest.mark.parametrize("rule", ["epsilon", "gamma", "zplus"])
def test_matches_zennit(make, shape, rule):
    model = _randomize_biases(make()).double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    target = torch.arange(shape[0]) % 6
    if rule == "epsilon":
        config = LRPConfig(epsilon=1e-6)
        composite = LayerMapComposite(layer_map=[
            (Activation, Pass()), (Convolution, Epsilon(epsilon=1e-6)), (Linear, Epsilon(epsilon=1e-6))])
    elif rule == "zplus":
        config = LRPConfig(epsilon=1e-6, zplus=True)
        composite = LayerMapComposite(layer_map=[(Activation, Pass()), (Convolution, ZPlus()), (Linear, ZPlus())])
    else:
        config = LRPConfig(epsilon=1e-6, gamma_linear=0.25, gamma_conv=0.25)
        composite = LayerMapComposite(layer_map=[
            (Activation, Pass()), (Convolution, Gamma(gamma=0.25)), (Linear, Gamma(gamma=0.25))])
    ours = LRP(model, config).attribute(x, target=target)
    theirs = _zennit(model, composite, x, target)
    assert theirs.abs().sum() > 0
    err = (ours - theirs).abs().max() / theirs.abs().max()
    assert err < 1e-4, err


def test_separate_gammas_for_linear_and_conv_both_matter():
    model = _randomize_biases(_vgg_like()).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    base = LRP(model, LRPConfig(gamma_linear=0.25, gamma_conv=0.25)).attribute(x, target=1)
    lin_only = LRP(model, LRPConfig(gamma_linear=0.25, gamma_conv=0.0)).attribute(x, target=1)
    conv_only = LRP(model, LRPConfig(gamma_linear=0.0, gamma_conv=0.25)).attribute(x, target=1)
    assert not torch.allclose(base, lin_only) and not torch.allclose(base, conv_only)
    composite = LayerMapComposite(layer_map=[(Activation, Pass()), (Convolution, Gamma(gamma=0.25)),
                                             (Linear, Gamma(gamma=1e-12))])
    theirs = _zennit(model, composite, x, torch.tensor([1, 1]))
    assert (conv_only - theirs).abs().max() / theirs.abs().max() < 1e-4
