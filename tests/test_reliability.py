"""Bad input gets a clear error, reduced precision stays close, nothing leaks."""
import gc
import pathlib
import re
import warnings

import pytest
import torch
import torch.nn as nn
import transformers

from dynamiclrp import LRP, LRPConfig, NonFiniteRelevanceError, UnsupportedOperationError


def _cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 16), nn.GELU(),
                         nn.LayerNorm(16), nn.Linear(16, 4))


def _gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_and_bfloat16_close_to_float32(dtype):
    model = _cnn().eval()
    x = torch.rand(2, 3, 8, 8)
    ref = LRP(model).attribute(x, target=[1, 2])
    low = LRP(model.to(dtype)).attribute(x.to(dtype), target=[1, 2])
    assert low.dtype == torch.float32  # accumulated in float32
    assert torch.isfinite(low).all()
    assert _rel_err(low, ref) < (0.05 if dtype == torch.float16 else 0.15)

    gpt = _gpt2()
    ids = torch.randint(0, 64, (1, 6))
    ref = LRP(gpt).attribute(ids, target=(5, 3))
    low = LRP(gpt.to(dtype)).attribute(ids, target=(5, 3))
    assert torch.isfinite(low).all()
    assert _rel_err(low, ref) < (0.05 if dtype == torch.float16 else 0.2)


class _Double(torch.autograd.Function):
    """An op without a rule: autograd keeps no non-tensor argument, so dynamiclrp cannot re-run it."""

    @staticmethod
    def forward(ctx, x, factor):
        return factor * x

    @staticmethod
    def backward(ctx, g):
        return 2 * g, None


class _WithCustom(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        return self.lin(_Double.apply(x, 2))


def test_unsupported_raises_by_default_and_warns_loudly_when_asked():
    x = torch.randn(2, 4)
    with pytest.raises(UnsupportedOperationError, match="_DoubleBackward x1"):
        LRP(_WithCustom()).attribute(x, target=0)
    model = _WithCustom()
    with pytest.warns(UserWarning, match="_DoubleBackward.*FallbackRule"):
        rel = LRP(model, LRPConfig(unsupported="warn", epsilon=1e-12)).attribute(x, target=0)
    # the fallback is the identity here (one input, same size), so bias-free epsilon-LRP is gradient x input
    xg = x.clone().requires_grad_()
    model(xg)[:, 0].sum().backward()
    assert torch.allclose(rel, xg.grad * x, atol=1e-6)


def test_no_fallback_warning_on_healthy_models():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LRP(_cnn().eval(), LRPConfig(unsupported="warn")).attribute(torch.rand(1, 3, 8, 8))


def test_non_finite_output_is_reported():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.bias.fill_(float("inf"))
    with pytest.raises(NonFiniteRelevanceError, match="starting relevance"):
        LRP(model).attribute(torch.randn(1, 3), target=0)


def test_thousand_explanations_do_not_grow_memory():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.Softmax(-1)).eval()
    lrp = LRP(model)
    x = torch.randn(4, 8)

    def live_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    def rss_kib():
        with open("/proc/self/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    for _ in range(50):  # warm up allocator and caches
        lrp.attribute(x, target=1)
    tensors0, rss0 = live_tensors(), rss_kib()
    for _ in range(1000):
        lrp.attribute(x, target=1)
    assert live_tensors() - tensors0 <= 5
    assert rss_kib() - rss0 < 20 * 1024  # KiB


def test_no_unsafe_torch_load_in_the_library():
    src = pathlib.Path(__file__).parents[1] / "src" / "dynamiclrp"
    for path in src.rglob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, f"{path}: {call}"
