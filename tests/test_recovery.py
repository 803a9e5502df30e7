"""Constants recovered from the graph itself (issue 11): ``propagate`` without a :class:`ConstantRecorder` solves
a constant addend that autograd did not keep from the sum a consumer saved (``b = y - a``), and gives exactly what
a recorded propagation gives; a constant that nothing recovers raises only if a rule really uses it (relevance
that is exactly zero needs no operand values), naming the op, the module path and the one-line fix."""
import pytest
import torch
from torch import nn

from dynamiclrp import LRP, ConstantRecorder, LRPConfig, UnrecoverableValueError, propagate
from dynamiclrp.zoo import ensure_torchvision_importable

CFG = LRPConfig(epsilon=1e-9)


def _both(model, x, select=lambda out: out, config=CFG, **kwargs):
    """Relevance of ``x`` from ``propagate`` without a recorder, and with one (same model, same seed)."""
    rels = []
    for record in (False, True):
        leaf = x.detach().clone().requires_grad_()
        rec = ConstantRecorder()
        if record:
            with rec:
                out = select(model(leaf, **kwargs))
        else:
            out = select(model(leaf, **kwargs))
        seed = torch.zeros_like(out)
        seed[..., int(out.detach().flatten()[: out.shape[-1]].argmax())] = 1.0
        seed = seed * out.detach()
        (rel,) = propagate(out, [leaf], relevance=seed, config=config, constants=rec.calls if record else None)
        rels.append(rel)
    return rels


class _ScalarBeforeLinear(nn.Module):
    """``x + 0.5`` then a linear layer: the layer saves the sum, so ``0.5 = sum - x``."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x + 0.5)


class _BufferBeforeLinear(nn.Module):
    """A buffer added to activations right before a linear layer (a position table)."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(4, 5), nn.Linear(5, 3)
        self.register_buffer("table", torch.randn(5))

    def forward(self, x):
        return self.out(torch.relu(self.inp(x)) - self.table)


class _Hidden(nn.Module):
    """Adds a constant where the recorder cannot see it, and where only a ReLU (which keeps its result) reads it."""

    def forward(self, x):
        with torch._C.DisableTorchFunction():
            return torch.relu(x + torch.full_like(x, 0.5))


class _Unsolvable(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = _Hidden()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.block(x))


class _DeadBranch(nn.Module):
    """An unsolvable constant in a branch whose relevance is exactly zero (sliced away)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return torch.cat([self.lin(x), torch.relu(x + 0.5)], -1)[:, :3]


@pytest.mark.parametrize("model", [_ScalarBeforeLinear, _BufferBeforeLinear])
def test_constant_addend_is_solved_from_the_saved_sum(model):
    torch.manual_seed(0)
    m = model().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    solved, recorded = _both(m, x)
    assert recorded.abs().sum() > 0
    torch.testing.assert_close(solved, recorded, rtol=1e-10, atol=1e-12)
    # the bias-like constant takes a share: a wrong (e.g. zero) constant would give gradient x input instead
    leaf = x.clone().requires_grad_()
    out = m(leaf)
    seed = torch.zeros_like(out)
    seed[:, 0] = out.detach()[:, 0]
    (rel,) = propagate(out, [leaf], relevance=seed, config=CFG)
    assert not torch.allclose(rel.sum(), seed.sum())


def test_unsolvable_constant_names_op_module_and_fix():
    torch.manual_seed(0)
    model, x = _Unsolvable().eval(), torch.randn(2, 4)
    leaf = x.clone().requires_grad_()
    with pytest.raises(UnrecoverableValueError, match=r"AddBackward0.*ConstantRecorder.*LRP\(model\)\.explain"):
        propagate(model(leaf), [leaf])
    # explain recorded the forward pass, but the constant was made where the recorder cannot see: the error says
    # so, and names the module that made the node
    with pytest.raises(UnrecoverableValueError, match="AddBackward0") as info:
        LRP(model).explain(x)
    assert info.value.op == "AddBackward0" and info.value.module == "block"
    assert "'block'" in str(info.value) and "recorder cannot see" in str(info.value)


def test_unsolvable_constant_with_zero_relevance_is_not_asked_for():
    torch.manual_seed(0)
    model, x = _DeadBranch().eval(), torch.randn(2, 4, requires_grad=True)
    out = model(x)
    (rel,) = propagate(out, [x], config=LRPConfig(epsilon=1e-12))
    with ConstantRecorder() as rec:
        out2 = model(x)
    (expected,) = propagate(out2, [x], config=LRPConfig(epsilon=1e-12), constants=rec.calls)
    torch.testing.assert_close(rel, expected)
    assert rel.abs().sum() > 0


class _GRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 5, batch_first=True)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def test_gru_explains_without_and_with_a_recorder():
    """``nn.GRU``'s initial hidden state is made inside aten (no recorder sees it); the step ``h - n`` is saved
    by the gate product that reads it, so ``h0 = (h - n) + n``."""
    torch.manual_seed(0)
    model, x = _GRU().eval(), torch.randn(2, 3, 4)
    expl = LRP(model, CFG).explain(x, target=1)
    assert torch.isfinite(expl.relevance[0]).all() and expl.relevance[0].abs().sum() > 0
    solved, recorded = _both(model, x, select=lambda out: out)
    torch.testing.assert_close(solved, recorded, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------- causal / seq2seq HF models

_HF = {
    "gptj": ("GPTJConfig", "GPTJForCausalLM", dict(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64,
                                                  rotary_dim=4)),
    "codegen": ("CodeGenConfig", "CodeGenForCausalLM", dict(n_embd=32, n_layer=2, n_head=4, vocab_size=100,
                                                           n_positions=64, n_ctx=64, rotary_dim=4)),
    "cohere": ("CohereConfig", "CohereForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                         num_attention_heads=4, num_key_value_heads=2,
                                                         vocab_size=100, max_position_embeddings=64)),
    "pegasus": ("PegasusConfig", "PegasusForConditionalGeneration", dict(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100, max_position_embeddings=64)),
    "falcon-mamba": ("FalconMambaConfig", "FalconMambaForCausalLM", dict(hidden_size=32, state_size=8,
                                                                        num_hidden_layers=2, vocab_size=100)),
    "jamba": ("JambaConfig", "JambaForCausalLM", dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=100, mamba_d_state=8, mamba_expand=2, num_experts=2, attn_layer_period=2, attn_layer_offset=1,
        expert_layer_period=2, expert_layer_offset=1)),
}


class _Embeds(nn.Module):
    """The HF model called on ``inputs_embeds`` (the path where position tables and masks are added to
    activations), returning the logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, embeds, **kwargs):
        return self.model(inputs_embeds=embeds, use_cache=False, **kwargs).logits


@pytest.mark.parametrize("name", sorted(_HF))
def test_hf_inputs_embeds_propagate_without_recorder(name):
    ensure_torchvision_importable()
    transformers = pytest.importorskip("transformers")
    config_cls, model_cls, kwargs = _HF[name]
    if not hasattr(transformers, config_cls):
        pytest.skip(f"{config_cls} is not in this transformers")
    torch.manual_seed(0)
    model = _Embeds(getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs))).eval()
    extra = {"decoder_inputs_embeds": torch.randn(1, 4, 32)} if name == "pegasus" else {}
    x = torch.randn(1, 6, 32)
    solved, recorded = _both(model, x, config=LRPConfig(), **extra)
    assert torch.isfinite(recorded).all() and recorded.abs().sum() > 0
    torch.testing.assert_close(solved, recorded, rtol=1e-5, atol=1e-7)
    # and LRP.explain (which records) gives the same, on its default seed
    leaf = x.clone().requires_grad_()
    (rel,) = propagate(model(leaf, **extra), [leaf])
    expl = LRP(model, LRPConfig()).explain(x, conservation_limit=None, **extra)
    torch.testing.assert_close(rel, expl.relevance[0], rtol=1e-5, atol=1e-7)


class _NoRuleAndUnsolvable(nn.Module):
    """An op without a rule next to an unsolvable constant (RAFT: grid_sample and a constant)."""

    def __init__(self):
        super().__init__()
        self.body = _Unsolvable()

    def forward(self, x):
        return self.body(x) + torch.linalg.det(x.view(-1, 2, 2)).unsqueeze(-1)


def test_missing_rule_is_named_before_any_value_is_asked_for():
    from dynamiclrp import UnsupportedOperationError
    from dynamiclrp.graph import Graph
    from dynamiclrp.rules import lookup

    torch.manual_seed(0)
    model, x = _NoRuleAndUnsolvable().eval(), torch.randn(2, 4)
    det = torch.linalg.det(x.clone().requires_grad_().view(-1, 2, 2))
    if lookup(Graph.capture(det).root) is not None:
        pytest.skip("linalg.det has a rule now: pick another op without one")
    with pytest.raises(UnsupportedOperationError, match="LinalgDetBackward0"):
        LRP(model).explain(x)
