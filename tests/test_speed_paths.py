"""No recomputation (issue 13): product rules reuse ``z = f(x, W) + b`` where the forward pass or a promise kept it,
the stabiliser is single-pass, and several targets share one forward pass -- all with the results of the former
paths (float64, within 1e-12 relative, or bit-identical)."""
import pytest
import torch

from dynamiclrp import LRP, LRPConfig
from dynamiclrp.errors import TargetError
from dynamiclrp.rules import base, linear
from dynamiclrp.zoo import build


def _old_stabilize(z, epsilon):
    """The former six-pass stabiliser, the reference."""
    return z + epsilon * ((z >= 0).to(z.dtype) * 2 - 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_stabilizer_bit_identical_to_the_former_formula(dtype):
    z = torch.randn(1000, dtype=torch.float64).to(dtype)
    z[:4] = torch.tensor([0.0, -0.0, 1e-30, -1e-30], dtype=torch.float64).to(dtype)
    for eps in (0.0, 1e-6, 0.25):
        new, old = base.stabilize(z, eps), _old_stabilize(z, eps)
        assert new.dtype == z.dtype and torch.equal(new, old)
        assert torch.equal(new.view(torch.int16 if dtype == torch.float16 else new.dtype), old.view(new.dtype if
                           dtype != torch.float16 else torch.int16))  # same bits, signed zeros included
    assert base.stabilize(torch.zeros(3), 1e-6).gt(0).all()  # sign(0) = +1


def test_ratio_in_place_equals_division():
    from dynamiclrp.rules.specs import ratio

    z, r = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    z[0, :3] = torch.tensor([0.0, -0.0, 1e-300], dtype=torch.float64)
    assert torch.equal(ratio(r, z, 1e-6), r / _old_stabilize(z, 1e-6))
    assert torch.equal(ratio(r[:1], z, 1e-6), r[:1] / _old_stabilize(z, 1e-6))  # broadcasting: no in-place
    assert torch.equal(z[0, :3], torch.tensor([0.0, -0.0, 1e-300], dtype=torch.float64))  # z itself untouched


class _Counted:
    """A bilinear map ``f`` that counts its forward evaluations (the transposes are passed through)."""

    def __init__(self, f, counter):
        self.f, self.counter = f, counter

    def __call__(self, a, b):
        self.counter.append(1)
        return self.f(a, b)

    def vjp(self, a, b, s, wrt):
        return linear._vjp(self.f, a, b, s, wrt)


@pytest.fixture
def count_products(monkeypatch):
    """Count the evaluations of ``f(x, W)`` inside product rules (wraps ``_ProductRule.f``)."""
    calls = []
    original = linear._ProductRule.relevance

    def relevance(self, ctx):
        f = type(self).f
        self.f = lambda node: _Counted(f(self, node), calls)  # an instance attribute shadows the method
        try:
            return original(self, ctx)
        finally:
            del self.f

    monkeypatch.setattr(linear._ProductRule, "relevance", relevance)
    return calls


def _recompute(monkeypatch):
    """The former path: ``z`` always recomputed from the operands."""
    monkeypatch.setattr(linear, "known_output", lambda ctx: None)


MODELS = [("hf:gpt2", LRPConfig.attnlrp()), ("hf:bert", LRPConfig.attnlrp()), ("hf:llama", LRPConfig.attnlrp()),
          ("torchvision:resnet18", LRPConfig()), ("torchvision:vgg11", LRPConfig(gamma_conv=0.25))]


def _example(spec):
    model, inputs, kwargs = build(spec, "1,3,32,32" if spec.startswith("torchvision") else None)
    model = model.double()
    inputs = tuple(x.double() if x.is_floating_point() else x for x in inputs)
    return model, inputs, kwargs


@pytest.mark.parametrize("spec,config", MODELS, ids=[m for m, _ in MODELS])
def test_reused_z_equals_recomputed_z(spec, config, monkeypatch, count_products):
    model, inputs, kwargs = _example(spec)
    lrp = LRP(model, config)
    fast = lrp.explain(inputs[0], **kwargs)
    n_fast = len(count_products)
    with monkeypatch.context() as m:
        _recompute(m)
        count_products.clear()
        ref = lrp.explain(inputs[0], **kwargs)
        n_ref = len(count_products)
    torch.testing.assert_close(fast.relevance[0], ref.relevance[0], rtol=1e-12, atol=1e-12 * float(
        ref.relevance[0].abs().max()))
    assert n_fast < n_ref, (n_fast, n_ref)  # some products did not recompute z


def test_no_product_recomputes_z_in_a_resnet(count_products):
    """Every convolution and the classifier of a ResNet have their output saved by a consumer (batch norm, the
    output itself): with the epsilon rule, ``f(x, W)`` is evaluated 0 times (21 before)."""
    model, inputs, _ = _example("torchvision:resnet18")
    LRP(model, LRPConfig()).explain(inputs[0])
    assert len(count_products) == 0


def test_promise_rebuilt_output_is_reused(count_products, monkeypatch):
    """``relu(x @ W1 + x @ W2) @ W3``: the addition saved neither summand, so a promise rebuilds both products'
    outputs (``engine._rebuild``); their rules reuse those values instead of evaluating ``f`` a second time, and
    the last product's ``z`` is the explained output itself. Zero evaluations in the rules (three before)."""
    torch.manual_seed(0)
    w1, w2, w3 = (torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64),
                  torch.randn(5, 4, dtype=torch.float64))

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x @ w1 + x @ w2) @ w3

    x = torch.randn(3, 6, dtype=torch.float64)
    lrp = LRP(Net(), LRPConfig(epsilon=1e-9))
    fast = lrp.explain(x, target=1)
    assert fast.stats["promises"] >= 1 and len(count_products) == 0
    _recompute(monkeypatch)
    count_products.clear()
    ref = lrp.explain(x, target=1)
    assert len(count_products) == 3
    torch.testing.assert_close(fast.relevance[0], ref.relevance[0], rtol=1e-12, atol=0)


@pytest.fixture()
def one_thread():
    """Bit-identity is a property of the computation, not of multithreaded float kernels (a 2-thread convolution
    may order its sums differently from call to call): compare on one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("spec,targets", [("torchvision:resnet18", "top3"), ("hf:gpt2", "positions")])
def test_explain_targets_bit_identical_to_separate_calls(spec, targets, one_thread):
    model, inputs, kwargs = build(spec, "1,3,32,32" if spec.startswith("torchvision") else None)
    lrp = LRP(model, LRPConfig.attnlrp() if spec.startswith("hf") else LRPConfig())
    with torch.no_grad():
        logits = model(inputs[0], **kwargs)
        logits = logits if isinstance(logits, torch.Tensor) else logits.logits
    if targets == "top3":
        targets = logits.topk(3).indices[0]
        separate = [lrp.explain(inputs[0], target=int(t), **kwargs) for t in targets]
    else:
        targets = [(p, int(logits[0, p].argmax())) for p in (2, 5, inputs[0].shape[1] - 1)]
        separate = [lrp.explain(inputs[0], target=t, **kwargs) for t in targets]
    joint = lrp.explain_targets(inputs[0], targets, **kwargs)
    assert len(joint) == len(separate) == 3
    for a, b in zip(joint, separate):
        assert torch.equal(a.relevance[0], b.relevance[0])
        assert torch.equal(a.seed, b.seed) and a.stats == b.stats
    assert not torch.equal(joint[0].relevance[0], joint[1].relevance[0])


def test_explain_targets_rejects_bad_targets():
    model, inputs, _ = build("torchvision:resnet18", "1,3,32,32")
    lrp = LRP(model)
    with pytest.raises(TargetError, match="list"):
        lrp.explain_targets(inputs[0], (1, 2))
    with pytest.raises(TargetError, match="empty"):
        lrp.explain_targets(inputs[0], [])
    with pytest.raises(TargetError, match="out of range"):
        lrp.explain_targets(inputs[0], [1, 10_000])


@pytest.mark.parametrize("config", [LRPConfig(zplus=True, canonize=True), LRPConfig.gamma(0.25)],
                         ids=["zplus-canonized", "gamma"])
def test_skipping_vanishing_negative_input_terms_is_exact(config, monkeypatch):
    """z+ and gamma on a ReLU's output (``x- = 0``) skip the ``x-`` products and transposes; the relevance equals
    the full computation (float64, up to the sign of exact zeros)."""
    from dynamiclrp.rules import specs

    model, inputs, _ = _example("torchvision:resnet18")
    lrp = LRP(model, config)
    fast = lrp.explain(inputs[0])
    monkeypatch.setattr(specs, "_nonnegative", lambda x: False)
    ref = lrp.explain(inputs[0])
    assert torch.equal(fast.relevance[0], ref.relevance[0])


@pytest.mark.parametrize("spec", ["ZPlus", "Gamma", "AlphaBeta"])
def test_skipping_negative_input_terms_with_parameter_relevance(spec):
    from dynamiclrp.rules import specs

    torch.manual_seed(0)
    x, w = torch.randn(5, 6, dtype=torch.float64).relu(), torch.randn(6, 4, dtype=torch.float64)
    b, r = torch.randn(4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    rule = {"ZPlus": specs.ZPlus(), "Gamma": specs.Gamma(0.25), "AlphaBeta": specs.AlphaBeta()}[spec]
    op = linear._Op(linear.Matmul())
    x[0, :3] = 0.0  # exact zeros among the positive inputs
    fast = rule(op, x, w, b, r, True)
    orig = specs._nonnegative
    try:
        specs._nonnegative = lambda x: False
        ref = rule(op, x, w, b, r, True)
    finally:
        specs._nonnegative = orig
    assert torch.equal(fast[0], ref[0])
    assert (fast[1] is None and ref[1] is None) or torch.equal(fast[1], ref[1])
    mixed = torch.randn(5, 6, dtype=torch.float64)  # negative inputs: the full computation still runs
    assert not specs._nonnegative(mixed) and torch.isfinite(rule(op, mixed, w, b, r, False)[0]).all()
