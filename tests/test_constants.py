"""Operands outside the autograd graph (frozen biases, frozen embedding tables, buffers) are read from the forward
pass, so freezing a model (``requires_grad_(False)``, LoRA base models) does not change its explanation."""
import pytest
import torch
import transformers
from torch import nn

from dynamiclrp import LRP, ConstantRecorder, LRPConfig, UnrecoverableValueError, propagate


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.conv = nn.Conv1d(2, 2, 3, padding=1)
        self.register_buffer("shift", torch.linspace(-1, 1, 8))

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = h + self.conv(h.reshape(-1, 2, 4)).reshape(h.shape) + self.shift  # a buffer addend: a bias
        return self.out(h + self.b(torch.relu(h)))


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4)])  # addmm, and F.linear on 3-D inputs (view/addmm/view)
def test_frozen_model_explains_like_trainable(shape):
    torch.manual_seed(0)
    model = _Residual().double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    cfg = LRPConfig(epsilon=1e-9)
    target = 1 if len(shape) == 2 else (2, 1)  # class 1 (of position 2 for a sequence)
    trainable = LRP(model, cfg).attribute(x, target=target)
    model.requires_grad_(False)
    frozen = LRP(model, cfg).attribute(x, target=target)
    torch.testing.assert_close(frozen, trainable, rtol=1e-10, atol=1e-12)
    assert all(not p.requires_grad for p in model.parameters())  # the model stays as the user left it


def test_frozen_language_model_explains_like_trainable():
    """Frozen embeddings put no lookup in the graph; the token lookup is lifted into it instead."""
    cfg = transformers.BertConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=32,
                                  vocab_size=50, max_position_embeddings=16, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).double().eval()
    ids = torch.randint(1, 50, (1, 6))
    lrp = LRP(model, LRPConfig(epsilon=1e-9))
    trainable = lrp.explain(ids, target=2, attention_mask=torch.ones_like(ids))
    model.requires_grad_(False)
    frozen = lrp.explain(ids, target=2, attention_mask=torch.ones_like(ids))
    # both tap the word-embedding lookup: its graph node when trainable, the lifted leaf when frozen
    assert frozen.relevance[0].shape == ids.shape
    assert torch.isfinite(frozen.relevance[0]).all() and frozen.relevance[0].abs().sum() > 0
    torch.testing.assert_close(frozen.embedding_relevance[0], trainable.embedding_relevance[0], rtol=1e-8,
                               atol=1e-12)


def test_propagate_needs_recorded_constants():
    torch.manual_seed(0)
    model = _Residual().double().eval().requires_grad_(False)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(UnrecoverableValueError, match="ConstantRecorder"):
        propagate(model(x), [x], target=0)
    with ConstantRecorder() as rec:
        out = model(x)
    (rel,) = propagate(out, [x], target=0, constants=rec.calls)
    assert torch.isfinite(rel).all() and rel.abs().sum() > 0


def test_inplace_update_of_a_constant_keeps_its_old_value():
    """``zeros.index_add_(...)`` (MoE layers): the recorded self is the value before the update."""
    src = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    base = torch.ones(5, 3, dtype=torch.float64)
    with ConstantRecorder() as rec:
        out = base.index_add_(0, torch.tensor([0, 2, 2, 4]), src * 2)
    (rel,) = propagate(out, [src], relevance=out.detach(), constants=rec.calls,
                       config=LRPConfig(add_rule="z", epsilon=1e-12))
    y = torch.ones(5, 3, dtype=torch.float64).index_add(0, torch.tensor([0, 2, 2, 4]), 2 * src.detach())
    expected = 2 * src.detach() * (y / y)[[0, 2, 2, 4]]  # z rule: R_s = c_s * R_y / y with R_y = y
    torch.testing.assert_close(rel, expected)


def test_bias_free_conv_never_takes_another_argument_as_bias():
    """``F.conv2d(x, w, None, stride, padding)``: a frozen conv without bias must not read its stride as one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(12, 2)).double().eval()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    cfg = LRPConfig(epsilon=1e-12)
    trainable = LRP(model, cfg).explain(x)
    model.requires_grad_(False)
    frozen = LRP(model, cfg).explain(x)
    torch.testing.assert_close(frozen.relevance[0], trainable.relevance[0], rtol=1e-10, atol=1e-14)
