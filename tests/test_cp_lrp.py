"""CP-LRP (``LRPConfig.cp_lrp()``; Ali et al. 2022, as LXT 2.1 implements it): the attention weights and the gate of
a gated MLP are constants, relevance flows only through the value path.

Oracle: on bias-free blocks whose only nonlinearities are the held softmax / gate, holding them constant leaves a map
that is linear in the input, so CP-LRP's relevance is exactly gradient x input of the same block with ``q``, ``k``
(or the gate branch) ``.detach()``-ed by hand -- which is also what LXT computes. The relevance reaching ``q`` and
``k`` is exactly zero."""
import pytest
import torch
import torch.nn.functional as F

from dynamiclrp import LRPConfig, propagate
from dynamiclrp.graph import Graph

CP = LRPConfig.cp_lrp(epsilon=1e-12)
UNIFORM = LRPConfig.attnlrp(epsilon=1e-12)
T, D, H = 5, 8, 2


def _weights(*shapes):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(*s, dtype=torch.float64, generator=g) / s[-1] ** 0.5 for s in shapes]


def column(y, j):
    """Seed relevance: the output's column ``j`` (every row / position), zero elsewhere."""
    seed = torch.zeros_like(y)
    seed[..., j] = y[..., j].detach()
    return seed


def grad_times_input(y, x, target):
    (g,) = torch.autograd.grad(y[..., target].sum(), x)
    return (x * g).detach()


def _eager_block(x, w, hold: bool):
    wq, wk, wv, wo = w
    q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
    if hold:
        q, k = q.detach(), k.detach()
    p = torch.softmax(q @ k.T / D ** 0.5, dim=-1)
    return (p @ v) @ wo.T, q, k, v


def _split(t, heads):
    return t.unflatten(-1, (heads, -1)).transpose(-3, -2)  # [B, T, D] -> [B, heads, T, D/heads]


def _sdpa_block(x, w, hold: bool, causal: bool, kv_heads: int):
    wq, wk, wv, wo = w
    q, k, v = _split(x @ wq.T, H), _split(x @ wk.T, kv_heads), _split(x @ wv.T, kv_heads)
    if hold:
        q, k = q.detach(), k.detach()
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=kv_heads != H)
    return o.transpose(-3, -2).flatten(-2) @ wo.T, q, k, v


def test_eager_attention_hand_computed():
    """One head, unfused: R_v = v * P^T (R_O / O) with P constant, R_q = R_k = 0, and R_x = gradient x input of the
    block with q, k detached; conservative (no biases)."""
    w = _weights((D, D), (D, D), (D, D), (3, D))
    x = torch.randn(T, D, dtype=torch.float64, requires_grad=True)
    y, q, k, v = _eager_block(x, w, hold=False)
    seed = column(y, 1)
    rx, rq, rk, rv = propagate(y, [x, q, k, v], relevance=seed, config=CP)
    assert torch.equal(rq, torch.zeros_like(rq)) and torch.equal(rk, torch.zeros_like(rk))
    # hand-computed value relevance: O = P v, R_O from the epsilon rule on the output projection
    p = torch.softmax(q @ k.T / D ** 0.5, -1).detach()
    o = (p @ v).detach()
    r_o = o * ((seed / y.detach()) @ w[3])
    torch.testing.assert_close(rv, v.detach() * (p.T @ (r_o / o)))
    y_hold, *_ = _eager_block(x, w, hold=True)
    torch.testing.assert_close(rx, grad_times_input(y_hold, x, 1))
    torch.testing.assert_close(rx.sum(), seed.sum())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [H, 1])
def test_fused_sdpa_equals_detached_qk(causal, kv_heads):
    """Fused scaled-dot-product attention (multi-head, causal, grouped-query): relevance of x equals gradient x
    input with q and k detached; q and k get exactly 0."""
    w = _weights((D, D), (D * kv_heads // H, D), (D * kv_heads // H, D), (3, D))
    x = torch.randn(2, T, D, dtype=torch.float64, requires_grad=True)
    y, q, k, v = _sdpa_block(x, w, hold=False, causal=causal, kv_heads=kv_heads)
    assert any("ScaledDotProduct" in type(n).__name__ for n in Graph.capture(y).order)
    rx, rq, rk = propagate(y, [x, q, k], relevance=column(y, 2), config=CP)
    assert torch.equal(rq, torch.zeros_like(rq)) and torch.equal(rk, torch.zeros_like(rk))
    y_hold, *_ = _sdpa_block(x, w, hold=True, causal=causal, kv_heads=kv_heads)
    torch.testing.assert_close(rx, grad_times_input(y_hold, x, 2))
    torch.testing.assert_close(rx.sum(), y[..., 2].detach().sum())
    # the uniform rule (AttnLRP) gives something else here: the comparison above can fail
    rx_uniform, = propagate(y, [x], relevance=column(y, 2), config=UNIFORM)
    assert (rx_uniform - rx).abs().max() > 1e-3 * rx.abs().max()


def test_eager_and_fused_agree():
    w = _weights((D, D), (D, D), (D, D), (3, D))
    x = torch.randn(1, T, D, dtype=torch.float64, requires_grad=True)
    y_fused, *_ = _sdpa_block(x, w, hold=False, causal=False, kv_heads=H)

    def eager(x):
        wq, wk, wv, wo = w
        q, k, v = _split(x @ wq.T, H), _split(x @ wk.T, H), _split(x @ wv.T, H)
        p = torch.softmax(q @ k.transpose(-2, -1) / (D // H) ** 0.5, -1)
        return (p @ v).transpose(-3, -2).flatten(-2) @ wo.T

    y_eager = eager(x)
    torch.testing.assert_close(y_eager, y_fused)
    r_fused, = propagate(y_fused, [x], relevance=column(y_fused, 0), config=CP)
    r_eager, = propagate(y_eager, [x], relevance=column(y_eager, 0), config=CP)
    torch.testing.assert_close(r_eager, r_fused, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("act", [F.silu, lambda t: F.gelu(t, approximate="tanh"), torch.sigmoid])
def test_gated_mlp_holds_the_gate(act):
    """down(act(gate(x)) * up(x)): the factor made by the nonlinearity is constant, up(x) gets all (LXT's
    cp_gated_mlp_forward); R_x = gradient x input with the gate branch detached; the gate projection gets 0."""
    wg, wu, wd = _weights((2 * D, D), (2 * D, D), (3, 2 * D))
    x = torch.randn(T, D, dtype=torch.float64, requires_grad=True)
    hg = x @ wg.T
    y = (act(hg) * (x @ wu.T)) @ wd.T
    rx, rg = propagate(y, [x, hg], relevance=column(y, 1), config=CP)
    assert torch.equal(rg, torch.zeros_like(rg))
    y_hold = (act(x @ wg.T).detach() * (x @ wu.T)) @ wd.T
    torch.testing.assert_close(rx, grad_times_input(y_hold, x, 1))
    # operand order does not matter
    y_swapped = ((x @ wu.T) * act(hg)) @ wd.T
    rx_swapped, = propagate(y_swapped, [x], relevance=column(y_swapped, 1), config=CP)
    torch.testing.assert_close(rx_swapped, rx)


def test_cp_keeps_uniform_without_a_structural_gate():
    """A product of two plain projections has no gate: CP-LRP falls back to the uniform rule, as AttnLRP."""
    wa, wb = _weights((D, D), (D, D))
    x = torch.randn(T, D, dtype=torch.float64, requires_grad=True)
    a, b = x @ wa.T, x @ wb.T
    y = a * b
    ra, rb = propagate(y, [a, b], relevance=y.detach(), config=CP)
    torch.testing.assert_close(ra, y.detach() / 2)
    torch.testing.assert_close(rb, y.detach() / 2)


def test_cp_still_treats_written_out_activations_as_identity():
    """x * sigmoid(x) is one activation (identity rule), not a gate held constant: all relevance reaches x."""
    (w,) = _weights((D, D))
    x = torch.randn(T, D, dtype=torch.float64, requires_grad=True)
    h = x @ w.T
    y = h * torch.sigmoid(h)
    rh, = propagate(y, [h], relevance=y.detach(), config=CP)
    torch.testing.assert_close(rh, y.detach())


def test_written_out_gate_is_held_but_a_norm_is_not():
    """CP-LRP's gate is found structurally: a written-out SiLU ``h * sigmoid(h)`` is a gate nonlinearity (held);
    an RMSNorm output ``h * rsqrt(mean(h^2))`` is not (a normalisation: no factor is a gate -> uniform)."""
    wg, wu = _weights((D, D), (D, D))
    x = torch.randn(T, D, dtype=torch.float64, requires_grad=True)
    hg, up = x @ wg.T, x @ wu.T
    y = (hg * torch.sigmoid(hg)) * up
    rg, ru = propagate(y, [hg, up], relevance=y.detach(), config=CP)
    assert torch.equal(rg, torch.zeros_like(rg))
    torch.testing.assert_close(ru, y.detach())
    normed = hg * torch.rsqrt(hg.pow(2).mean(-1, keepdim=True) + 1e-6)
    y = normed * up
    g = Graph.capture(y)
    assert g.held_factor_edge(y.grad_fn) is None
