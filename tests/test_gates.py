"""Nonlinearities and normalisations written out in primitives get AttnLRP's identity / constant-statistics rule
(issue 12, item 2): a product whose other factor is a function of the same activation alone passes all relevance
to that activation. Oracles: the fused op (F.silu, F.gelu(approximate="tanh"), F.hardswish, F.layer_norm) or the
same formula with the statistic ``.detach()``-ed by hand -- relevance must be equal, not merely close. Products of
two *different* activations (q*k, SwiGLU, GLU halves of one projection) must stay uniform (1/2-1/2)."""
import math
import types

import pytest
import torch
import torch.nn.functional as F

from dynamiclrp import LRP, ConstantRecorder, LRPConfig, propagate
from dynamiclrp.graph import Graph
from dynamiclrp.rules.base import edge_shape, unbroadcast
from dynamiclrp.rules.elementwise import MulRule

ATTN = LRPConfig.attnlrp(epsilon=1e-12)
CONFIGS = [ATTN, LRPConfig(epsilon=1e-12), LRPConfig.cp_lrp(epsilon=1e-12)]
D = 6


def relevance(fn, x, config, target=0):
    """Relevance of ``x`` for ``fn(x)[..., target]``; constants recorded so that a scalar addend can be read."""
    with ConstantRecorder() as rec:
        y = fn(x)
    return propagate(y, [x], config=config, target=target, constants=rec.calls)[0], y


def gelu_new(x):  # Hugging Face's NewGELUActivation (GPT-2), written out
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS = {
    "silu": (lambda x: x * torch.sigmoid(x), F.silu),
    "gelu_new": (gelu_new, lambda x: F.gelu(x, approximate="tanh")),
    "hardswish": (lambda x: x * F.relu6(x + 3) / 6, F.hardswish),
    "silu_div": (lambda x: x / (1 + torch.exp(-x)), F.silu),
}


def _weights(*shapes):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(*s, dtype=torch.float64, generator=g) for s in shapes]


@pytest.mark.parametrize("config", CONFIGS, ids=["attnlrp", "default", "cp"])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_written_out_activation_equals_fused(name, config):
    written, fused = ACTIVATIONS[name]
    w1, w2, w3 = _weights((8, 5), (8, 8), (3, 8))
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)

    def net(act):
        return lambda x: act(act(x @ w1.T) @ w2.T) @ w3.T

    r_written, y_written = relevance(net(written), x, config)
    r_fused, y_fused = relevance(net(fused), x, config)
    torch.testing.assert_close(y_written, y_fused)
    assert r_fused.abs().max() > 0.1
    torch.testing.assert_close(r_written, r_fused, rtol=1e-10, atol=1e-10)


def test_written_out_silu_conserves_through_bias_free_mlp():
    """Bias-free MLP with SiLU written as ``x * (0.5 + 0.5 tanh(x / 2))`` (= x sigmoid(x)): identity at the gates,
    epsilon -> 0 elsewhere, so sum R_x = logit per sample. Under the old uniform rule the constant 0.5 inside the
    gate kept a share and conservation broke (checked too, so this test can fail)."""
    w1, w2, w3 = _weights((16, 5), (16, 16), (3, 16))
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)

    def silu(t):
        return t * (0.5 + 0.5 * torch.tanh(t / 2))

    def net(x):
        return silu(silu(x @ w1.T) @ w2.T) @ w3.T

    torch.testing.assert_close(silu(x), F.silu(x))
    r, y = relevance(net, x, ATTN)
    torch.testing.assert_close(r.sum(-1), y[:, 0].detach(), rtol=1e-9, atol=1e-9)
    old = LRPConfig(epsilon=1e-12, add_rule="z", rule_overrides={"MulBackward0": _UniformMul()})
    r_old, _ = relevance(net, x, old)
    assert (r_old.sum(-1) - y[:, 0].detach()).abs().max() > 1e-2 * y[:, 0].abs().max()


def test_constant_in_gate_absorbs_nothing():
    """x * (1 + tanh(x)): the constant 1.0 sits in the gate factor, so it keeps no share (before: ~half of x's)."""
    x = torch.randn(10, dtype=torch.float64, requires_grad=True)
    r, y = relevance(lambda x: x * (1.0 + torch.tanh(x)), x, ATTN, target=torch.ones(10, dtype=torch.bool))
    torch.testing.assert_close(r, y.detach(), rtol=1e-12, atol=1e-12)


def _rms(w, det):
    def norm(x):
        s = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return w * (x * (s.detach() if det else s))
    return norm


def _gemma(w, det):
    def norm(x):
        s = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return (x * (s.detach() if det else s)) * (1.0 + w)
    return norm


def _centered(det, var_from_x):
    def norm(x):
        mu = x.mean(-1, keepdim=True)
        xc = x - mu
        src = x - x.mean(-1, keepdim=True) if var_from_x else xc  # a second mean node: var computed from x
        s = torch.rsqrt(src.pow(2).mean(-1, keepdim=True) + 1e-5)
        return xc * (s.detach() if det else s)
    return norm


def _l2(det):
    def norm(x):
        n = x.pow(2).sum(-1, keepdim=True).sqrt()
        return x / (n.detach() if det else n)
    return norm


NORMS = {
    "rmsnorm": lambda w, det: _rms(w, det),
    "gemma_rmsnorm": lambda w, det: _gemma(w, det),
    "gemma_rmsnorm_param": lambda w, det: _gemma(torch.nn.Parameter(w), det),  # (1.0 + weight): a parameter
    "t5_centered_var_from_xc": lambda w, det: _centered(det, False),
    "t5_centered_var_from_x": lambda w, det: _centered(det, True),
    "l2": lambda w, det: _l2(det),
}


@pytest.mark.parametrize("config", CONFIGS, ids=["attnlrp", "default", "cp"])
@pytest.mark.parametrize("name", list(NORMS))
def test_written_out_norm_equals_hand_detached(name, config):
    w1, w2, w = _weights((D, 5), (3, D), (D,))
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    r, y = relevance(lambda x: NORMS[name](w, False)(x @ w1.T) @ w2.T, x, config)
    r_det, y_det = relevance(lambda x: NORMS[name](w, True)(x @ w1.T) @ w2.T, x, config)
    torch.testing.assert_close(y, y_det)
    assert r_det.abs().max() > 0.1
    torch.testing.assert_close(r, r_det, rtol=1e-10, atol=1e-10)


def test_written_out_layer_norm_equals_fused_layer_norm():
    """(x - mu) * rsqrt(var + eps) with the z-rule on the centering equals our F.layer_norm rule (sigma constant,
    mean kept, as LXT's layer_norm_forward)."""
    w1, w2 = _weights((D, 5), (3, D))
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    r, _ = relevance(lambda x: _centered(False, False)(x @ w1.T) @ w2.T, x, ATTN)
    r_fused, _ = relevance(lambda x: F.layer_norm(x @ w1.T, (D,), eps=1e-5) @ w2.T, x, ATTN)
    torch.testing.assert_close(r, r_fused, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("config", CONFIGS[::2], ids=["attnlrp", "cp"])
def test_tiny_transformer_block_written_out_equals_fused(config):
    """Pre-LN transformer block (attention + MLP, residuals, biases) with LayerNorm and gelu_new written out
    equals the same block with F.layer_norm and F.gelu(approximate="tanh")."""
    wq, wk, wv, wo, w1, w2 = _weights((D, D), (D, D), (D, D), (D, D), (4 * D, D), (D, 4 * D))
    b1, b2 = _weights((4 * D,), (D,))

    def block(x, norm, act):
        h = norm(x)
        q, k, v = (t.unflatten(-1, (2, -1)).transpose(1, 2) for t in (h @ wq.T, h @ wk.T, h @ wv.T))
        x = x + F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(-2) @ wo.T
        return x + act(norm(x) @ w1.T + b1) @ w2.T + b2

    x = torch.randn(1, 5, D, dtype=torch.float64, requires_grad=True)
    written = lambda x: block(x, _centered(False, False), gelu_new)  # noqa: E731
    fused = lambda x: block(x, lambda t: F.layer_norm(t, (D,), eps=1e-5),  # noqa: E731
                            lambda t: F.gelu(t, approximate="tanh"))
    r, y = relevance(written, x, config, target=None)
    r_fused, y_fused = relevance(fused, x, config, target=None)
    torch.testing.assert_close(y, y_fused)
    assert r_fused.abs().max() > 1e-2
    torch.testing.assert_close(r, r_fused, rtol=1e-8, atol=1e-8 * float(r_fused.abs().max()))


class _UniformMul(MulRule):
    """The old rule: 1/2-1/2 whenever both factors are activations."""

    def relevance(self, ctx):
        if len(ctx.edges) == 2 and all(ctx.has_edge(i) and not ctx.is_param(i) for i in range(2)):
            return [unbroadcast(ctx.relevance[0] / 2, edge_shape(ctx, i)) for i in range(2)]
        return super().relevance(ctx)


@pytest.mark.parametrize("name", ["rmsnorm", "t5_centered_var_from_x"])
def test_oracle_fails_for_the_old_uniform_rule(name):
    """Guard that the oracles above can fail: the uniform rule leaks relevance into the statistic's path."""
    w1, w2, w = _weights((D, 5), (3, D), (D,))
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    old = LRPConfig(epsilon=1e-12, add_rule="z", rule_overrides={"MulBackward0": _UniformMul()})
    r_old, _ = relevance(lambda x: NORMS[name](w, False)(x @ w1.T) @ w2.T, x, old)
    r_det, _ = relevance(lambda x: NORMS[name](w, True)(x @ w1.T) @ w2.T, x, ATTN)
    assert (r_old - r_det).abs().max() > 1e-2 * r_det.abs().max()


# ------------------------------------------------------------------------------------------ negative cases


def _mul_shares(a, b):
    """Relevance of the two factors of ``y = a * b`` with seed ``y``, through taps at ``a`` and ``b``."""
    y = a * b
    ra, rb = propagate(y, [a, b], relevance=y.detach(), config=ATTN)
    return y.detach(), ra, rb


def test_product_of_two_projections_stays_uniform():
    """q * k with q = x W_q, k = x W_k: k is not a function of q alone -> 1/2-1/2 (AttnLRP Eq. 7)."""
    wq, wk = _weights((D, 5), (D, 5))
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y, rq, rk = _mul_shares(x @ wq.T, x @ wk.T)
    torch.testing.assert_close(rq, y / 2)
    torch.testing.assert_close(rk, y / 2)


def test_swiglu_stays_uniform_and_cp_holds_the_gate():
    wg, wu = _weights((D, 5), (D, 5))
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    h_gate, h_up = x @ wg.T, x @ wu.T
    y = F.silu(h_gate) * h_up
    for config, share_gate, share_up in ((ATTN, 0.5, 0.5), (LRPConfig.cp_lrp(epsilon=1e-12), 0.0, 1.0)):
        rg, ru = propagate(y, [h_gate, h_up], relevance=y.detach(), config=config)
        torch.testing.assert_close(rg, share_gate * y.detach())  # through SiLU's identity
        torch.testing.assert_close(ru, share_up * y.detach())


def test_glu_halves_of_one_projection_stay_uniform():
    """Fused gate/up projection split by chunk (Phi-3's MLP, GLU): the halves are different activations even
    though both come from one node (told apart by output slot)."""
    (w,) = _weights((2 * D, 5))
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    h = x @ w.T
    gate, up = h.chunk(2, dim=-1)
    y = F.silu(gate) * up
    rh, = propagate(y, [h], relevance=y.detach(), config=ATTN)
    torch.testing.assert_close(rh[:, :D], y.detach() / 2)
    torch.testing.assert_close(rh[:, D:], y.detach() / 2)


def test_mamba_style_gate_stays_uniform():
    """Mamba's mixer: in_proj -> (h, z) = chunk; h -> causal conv -> SiLU -> a selective scan whose step size is a
    function of h itself (delta * h: one activation, identity), then y = scan(h) * silu(z): two different
    activations, 1/2-1/2 (AttnLRP); CP-LRP holds silu(z) constant."""
    w_in, w_dt, w_out = _weights((2 * D, 5), (D, D), (3, D))
    conv = torch.randn(D, 1, 3, dtype=torch.float64)
    x = torch.randn(1, 7, 5, dtype=torch.float64, requires_grad=True)
    with ConstantRecorder() as rec:
        h, z = (x @ w_in.T).chunk(2, dim=-1)
        hc = F.silu(F.conv1d(h.transpose(1, 2), conv, padding=2, groups=D)[..., :7].transpose(1, 2))
        delta = F.softplus(hc @ w_dt.T)
        u = delta * hc  # selective step size times the input: a function of hc alone
        state, outs = u[:, 0], [u[:, 0]]
        for t in range(1, u.shape[1]):
            state = 0.9 * state + u[:, t]
            outs.append(state)
        scan = torch.stack(outs, 1)
        gated = F.silu(z)
        y = scan * gated
    for config, share in ((ATTN, 0.5), (LRPConfig.cp_lrp(epsilon=1e-12), 1.0)):
        r_scan, r_gate, r_hc = propagate(y, [scan, gated, hc], relevance=y.detach(), config=config,
                                         constants=rec.calls)
        torch.testing.assert_close(r_scan, share * y.detach())
        torch.testing.assert_close(r_gate, (1 - share) * y.detach())
        torch.testing.assert_close(r_hc.sum(), share * y.detach().sum())  # all of u's relevance reaches hc
    g = Graph.capture(y)
    assert g.self_gated_edge(y.grad_fn) is None and g.self_gated_edge(u.grad_fn) == 1


def test_attention_scores_stay_uniform():
    """Q K^T of an unfused attention block (Matmul rule, unchanged) and an elementwise q*k: 1/2-1/2."""
    wq, wk = _weights((D, 5), (D, 5))
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    q, k = x @ wq.T, x @ wk.T
    s = q @ k.T
    rq, rk = propagate(s, [q, k], relevance=s.detach(), config=ATTN, target=None)
    torch.testing.assert_close(rq.sum() + rk.sum(), s.detach().sum())
    torch.testing.assert_close(rq, 0.5 * q * ((s / s) @ k).detach())  # R_q = 1/2 q * (R/s) k


def test_gate_analysis_is_bounded_on_deep_graphs():
    """A product of two different activations at the end of a deep chain: the searches stop at the budget
    (no quadratic blow-up), and the answer stays 'not a gate'."""
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    (w,) = _weights((5, 5))
    h = x
    for _ in range(400):
        h = torch.tanh(h @ w.T) + h
    y = h * (x @ w.T)
    g = Graph.capture(y)
    assert g.self_gated_edge(y.grad_fn) is None


# ------------------------------------------------------------------------------- Hugging Face GPT-2 / Llama


def _tiny(kind):
    import transformers

    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=16,
                                      activation_function="gelu_new", bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=50, max_position_embeddings=16)
    return transformers.LlamaForCausalLM(cfg)


def _detached_rmsnorm_forward(self, hidden_states):  # HF's LlamaRMSNorm.forward with the statistic detached
    dtype = hidden_states.dtype
    h = hidden_states.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon).detach()
    return self.weight * h.to(dtype)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
def test_hf_models_equal_fused_or_detached_oracle(kind, preset):
    torch.manual_seed(0)
    model = _tiny(kind).double().eval()
    oracle = _tiny(kind).double().eval()
    oracle.load_state_dict(model.state_dict())
    if kind == "gpt2":  # the oracle uses the fused tanh-GELU
        for block in oracle.transformer.h:
            block.mlp.act = torch.nn.GELU(approximate="tanh")
    else:  # the oracle's RMSNorms detach their statistic by hand
        for module in oracle.modules():
            if type(module).__name__ == "LlamaRMSNorm":
                module.forward = types.MethodType(_detached_rmsnorm_forward, module)
    ids = torch.randint(1, 50, (1, 7))
    config = getattr(LRPConfig, preset)(epsilon=1e-12)
    e = LRP(model, config).explain(ids, use_cache=False)
    e_oracle = LRP(oracle, config).explain(ids, use_cache=False)
    ref = e_oracle.embedding_relevance[0]
    assert ref.abs().max() > 1e-3
    err = (e.embedding_relevance[0] - ref).abs().max() / ref.abs().max()
    assert err < 1e-9, err
