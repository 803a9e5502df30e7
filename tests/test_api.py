"""The public API: targets, outputs, errors, and the guarantees that the model is left untouched."""
import threading

import pytest
import torch
import torch.nn as nn

from dynamiclrp import (
    LRP,
    DynamicLRPError,
    LRPConfig,
    NoGradGraphError,
    NonFiniteRelevanceError,
    TargetError,
    UnsupportedOperationError,
    propagate,
)
from dynamiclrp.rules import IdentityRule


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 5))


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {k: p.requires_grad for k, p in model.named_parameters()}, model.training,
            [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()])


def test_model_unchanged_and_backward_still_works():
    model = _model().eval()
    before = _snapshot(model)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    out = model(x)
    ref_grads = torch.autograd.grad(out[:, 0].sum(), [x, *model.parameters()], retain_graph=True)

    rel = propagate(out, [x], target=0)[0]
    assert rel.shape == x.shape and rel.abs().sum() > 0
    out[:, 0].sum().backward()  # the very same graph still backpropagates, with the same gradients
    for g, p in zip(ref_grads, [x, *model.parameters()]):
        assert torch.equal(g, p.grad)
    LRP(model).attribute(torch.randn(2, 3, 6, 6), target=1)
    after = _snapshot(model)
    assert before[1:] == after[1:]
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])


def test_two_configs_are_independent_even_interleaved():
    model = _model().eval()
    x = torch.randn(3, 3, 6, 6)
    a, b = LRP(model, LRPConfig(epsilon=1e-6)), LRP(model, LRPConfig(epsilon=1.0, gamma_conv=0.5))
    ra1, rb1 = a.attribute(x, target=2), b.attribute(x, target=2)
    ra2 = a.attribute(x, target=2)
    assert torch.equal(ra1, ra2)
    assert not torch.allclose(ra1, rb1)
    results = {}

    def work(name, lrp):
        results[name] = lrp.attribute(x, target=2)

    threads = [threading.Thread(target=work, args=(n, lrp)) for n, lrp in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(results["a"], ra1) and torch.equal(results["b"], rb1)


def test_batch_targets_seed_each_sample_separately():
    # The paper's code seeds the wrong logit in batches; each sample must match its own single explanation.
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(4, 6)
    targets = [3, 0, 2, 1]
    batch = LRP(model).attribute(x, target=targets)
    for i, t in enumerate(targets):
        single = LRP(model).attribute(x[i:i + 1], target=t)
        assert torch.allclose(batch[i:i + 1], single, atol=1e-6)
    # default target: the arg-max of each sample
    out = model(x)
    assert torch.allclose(LRP(model).attribute(x), LRP(model).attribute(x, target=out.argmax(1)))


def test_target_errors():
    model = nn.Linear(3, 2)
    lrp = LRP(model)
    with pytest.raises(TargetError, match="out of range"):
        lrp.attribute(torch.randn(2, 3), target=5)
    with pytest.raises(TargetError, match="batch size"):
        lrp.attribute(torch.randn(2, 3), target=[0, 1, 1])
    out = model(torch.randn(2, 3, requires_grad=True))
    with pytest.raises(TargetError, match="relevance shape"):
        propagate(out, [], relevance=torch.ones(3, 2))
    seq = torch.randn(1, 4, 5, requires_grad=True) * 1.0
    with pytest.raises(TargetError, match=r"\(position, token\)"):
        propagate(seq, [], target=[3])
    with pytest.raises(TargetError, match="out of range"):
        propagate(seq, [], target=(4, 0))


def test_no_grad_output_raises():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        out = model(torch.randn(1, 3))
    with pytest.raises(NoGradGraphError, match="no_grad"):
        propagate(out, [])


class _Custom(torch.autograd.Function):
    """An op without a rule: its non-tensor argument is not kept by autograd, so dynamiclrp cannot re-run it."""

    @staticmethod
    def forward(ctx, x, factor):
        return x * factor

    @staticmethod
    def backward(ctx, g):
        return g * 2, None


def test_unsupported_op_is_named():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return _Custom.apply(self.lin(x), 2)

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = M()

        def forward(self, x):
            return self.block(x)

    with pytest.raises(UnsupportedOperationError, match=r"_CustomBackward x1 \(in block\)"):
        LRP(Outer()).attribute(torch.randn(2, 3), target=0)


def test_rule_override_and_nan_detection():
    class M(nn.Module):
        def forward(self, x):
            return _Custom.apply(x, 2).sum(1, keepdim=True)

    class Ident(IdentityRule):
        def forward(self, node, inputs):  # lets promises (the sum's) rebuild the output
            return (inputs[0] * 2,)

    x = torch.randn(2, 3)
    rel = LRP(M(), LRPConfig(rule_overrides={"_CustomBackward": Ident()})).attribute(x, target=0)
    assert torch.allclose(rel.sum(1), 2 * x.sum(1), atol=1e-5)

    class Broken(Ident):
        def relevance(self, ctx):
            return [ctx.relevance[0] * float("nan")]

    with pytest.raises(NonFiniteRelevanceError, match="_CustomBackward"):
        LRP(M(), LRPConfig(rule_overrides={"_CustomBackward": Broken()})).attribute(x, target=0)


def test_config_validation():
    with pytest.raises(ValueError):
        LRPConfig(epsilon=-1)
    with pytest.raises(ValueError):
        LRPConfig(add_rule="nope")
    with pytest.raises(ValueError):
        LRPConfig(rule_overrides={"Mul": IdentityRule()})
    with pytest.raises(TypeError):
        LRPConfig(rule_overrides={"MulBackward0": "identity"})
    with pytest.raises(AttributeError):
        LRPConfig().epsilon = 2  # frozen


def test_model_output_selection():
    class TupleModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            y = self.lin(x)
            return {"logits": y, "hidden": x}

    x = torch.randn(2, 3)
    assert LRP(TupleModel()).attribute(x, target=0).shape == x.shape
    r1 = LRP(TupleModel(), output_selector=lambda o: o["logits"]).attribute(x, target=0)
    assert r1.abs().sum() > 0

    class DictModel(TupleModel):
        def forward(self, x):
            return {"scores": self.lin(x)}

    with pytest.raises(DynamicLRPError, match="output_selector"):
        LRP(DictModel()).attribute(x, target=0)
    assert LRP(DictModel(), output_selector="scores").attribute(x, target=0).abs().sum() > 0


def test_input_without_grad_is_an_error_not_zeros():
    w = nn.Parameter(torch.randn(3, 2))
    x = torch.randn(4, 3)  # does not require grad
    out = x @ w
    with pytest.raises(DynamicLRPError, match="requires_grad_"):
        propagate(out, [x], target=0)


def test_propagate_to_intermediates_params_and_multi_output_nodes():
    x = torch.randn(4, 6, requires_grad=True)
    w = nn.Parameter(torch.randn(6, 6))
    h = torch.relu(x @ w)
    a, b = h.unbind(0)[1:3]
    c1, c2 = h.split([2, 4], dim=1)
    m, _idx = h.max(dim=1)
    out = torch.cat([a, b, c1.sum(0), c2.chunk(2, 1)[1].sum(0), m])
    r_x, r_h, r_w = propagate(out, [x, h, w], relevance=out.detach())
    # conservation down to h: routing, max and sums are conservative; h then splits to x through epsilon
    assert torch.allclose(r_h.sum(), out.sum(), rtol=1e-4)
    assert torch.allclose(r_x.sum(), out.sum(), rtol=1e-3)
    assert r_w.shape == w.shape and r_w.abs().sum() > 0
    # tensors that did not contribute get zeros
    unused = torch.randn(3, requires_grad=True)
    assert torch.equal(propagate(out, [unused], relevance=out.detach())[0], torch.zeros(3))


def test_default_config_is_chosen_per_graph_from_the_measured_presets():
    """LRP(model) without a config: epsilon_plus for convolutional networks, attnlrp where there is softmax
    attention (and for anything else): the most faithful presets measured (README, Results)."""
    from dynamiclrp.zoo import build

    torch.manual_seed(0)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    expl = LRP(cnn).explain(x)
    assert expl.config == LRPConfig.epsilon_plus()
    torch.testing.assert_close(expl.relevance[0], LRP(cnn, LRPConfig.epsilon_plus()).attribute(x))
    gpt2, inputs, kwargs = build("hf:gpt2")
    assert LRP(gpt2).explain(*inputs, **kwargs).config == LRPConfig.attnlrp()
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    assert LRP(mlp).explain(torch.randn(1, 4)).config == LRPConfig.attnlrp()
    explicit = LRPConfig(epsilon=1e-3)
    assert LRP(mlp, explicit).explain(torch.randn(1, 4)).config is explicit
