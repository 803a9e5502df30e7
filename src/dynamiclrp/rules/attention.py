"""Softmax and fused scaled-dot-product attention (AttnLRP, Achtibat et al. 2024).

Softmax ``s = softmax(x)`` along ``dim``: ``R_x = x * (R_s - s * sum(R_s))`` (AttnLRP Prop. 3.1: the Taylor
decomposition at the bias-absorbing root). Entries the model masked out (``x = -inf``, or a fill value autograd
did not keep) have ``s = 0`` and get exactly zero relevance.

Fused attention ``O = softmax(scale * Q K^T + mask) V`` is decomposed into those primitives and explained with the
same rules the unfused graph would get: the uniform bilinear rule for ``P V`` and for ``Q K^T``, the softmax rule in
between (an additive float mask is a constant bias of the softmax and absorbs its share, see
:class:`SoftmaxRule`), the identity for the scale. The causal mask is applied **only when the op itself
was called with ``is_causal=True``** (read from the node), so encoders such as BERT and ViT are not masked.

CP-LRP (``LRPConfig(bilinear="cp")``; Ali et al., "XAI for Transformers: Better Explanations through Conservative
Propagation", ICML 2022; LXT 2.1 detaches Q and K): ``P`` is a constant, so ``O = P V`` is linear in ``V`` and
``R_V = V * P^T (R_O / stab(O))`` takes all the relevance; ``R_Q = R_K = 0``. The unfused graph gets the same from
:func:`dynamiclrp.rules.linear.held_product_relevance` (the factor made by the softmax is the one held).
"""
from __future__ import annotations

import torch

from .. import saved
from .base import OpRule, register, stabilize
from .linear import Matmul, held_product_relevance, product_relevance


def softmax_relevance(x, s, r, dim):
    """``R_x = x * (R_s - s * sum(R_s))``, zero where the input was masked out (``s == 0``, ``x`` not finite)."""
    rel = x * (r - s * r.sum(dim, keepdim=True))
    return torch.where((s == 0) & ~torch.isfinite(x), torch.zeros((), dtype=rel.dtype), rel)


@register("SoftmaxBackward", "SafeSoftmaxBackward")
class SoftmaxRule(OpRule):
    """Softmax: AttnLRP's rule (see module doc). Needs the softmax *input*, which autograd does not save: a
    strict promise-generating operation.

    A constant added to the scores that autograd kept neither as a tensor nor as the sum (an additive mask
    buffer, an ALiBi bias in ``baddbmm``) is treated as a bias of the softmax: with ``x = a + m`` and
    ``g = R_s - s * sum(R_s)``, the scores get ``R_a = a * g`` and ``m`` absorbs ``m * g`` -- what the z-rule on the
    addition composed with this rule gives, and what this rule gives for a fused attention's mask."""

    absorbs_input_constants = True

    def needs(self, node, graph):
        return (0,)

    def saved_output(self, node):
        return (saved.get(node, "result"),)

    def forward(self, node, inputs):
        return (torch.softmax(inputs[0], saved.get(node, "dim")),)

    def relevance(self, ctx):
        s = saved.get(ctx.node, "result")
        return [softmax_relevance(ctx.inputs[0], s, ctx.relevance[0], saved.get(ctx.node, "dim"))]


def masked_softmax(x, dim=-1):
    """``softmax(x, dim)`` with rows masked out entirely (every entry ``-inf``) set to 0 instead of NaN: what
    torch's fused attention returns for a fully masked query row (a left-padding position in a batch), so the
    rule's recomputed output and relevance match the forward pass there (both exactly zero)."""
    p = torch.softmax(x, dim)
    dead = torch.isneginf(x).all(dim, keepdim=True)
    return torch.where(dead, torch.zeros((), dtype=p.dtype), p) if bool(dead.any()) else p


def _expand_kv(t, heads):
    """Grouped-query attention: repeat key/value heads to match the query heads."""
    if t.shape[-3] == heads:
        return t
    return t.repeat_interleave(heads // t.shape[-3], dim=-3)


@register("ScaledDotProductFlashAttentionForCpuBackward", "ScaledDotProductEfficientAttentionBackward",
          "ScaledDotProductFlashAttentionBackward", "ScaledDotProductCudnnAttentionBackward",
          "ScaledDotProductAttentionMathBackward")
class SDPARule(OpRule):
    """``O = softmax(scale * Q K^T + mask) V`` as one fused node; see the module doc for the decomposition."""

    def known_inputs(self, node):
        vals = [None] * len(node.next_functions)
        vals[0], vals[1], vals[2] = saved.get(node, "query"), saved.get(node, "key"), saved.get(node, "value")
        return vals

    def forward_needs(self, node):
        return (0, 1, 2)

    def saved_output(self, node):
        out = saved.get(node, "output", None)
        if out is None:
            return None
        rest = [saved.zeros(node, k) for k in range(1, saved.num_outputs(node))]
        return (out, *rest)

    def _scores(self, node, q, k):
        scale = saved.get(node, "scale", None)
        if scale is None:
            scale = q.shape[-1] ** -0.5
        k = _expand_kv(k, q.shape[-3])
        a = scale * q @ k.transpose(-2, -1)
        mask = saved.get(node, "attn_mask", None)
        x = a
        if mask is not None:
            x = x.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else x + mask
        if saved.get(node, "is_causal", False):
            lq, lk = x.shape[-2], x.shape[-1]
            causal = torch.ones(lq, lk, dtype=torch.bool, device=x.device).tril(diagonal=lk - lq)
            x = x.masked_fill(~causal, float("-inf"))
        return scale, a, x

    def forward(self, node, inputs):
        q, k, v = inputs[0], inputs[1], inputs[2]
        _, _, x = self._scores(node, q, k)
        out = masked_softmax(x, -1) @ _expand_kv(v, q.shape[-3])
        rest = [saved.zeros(node, k) for k in range(1, saved.num_outputs(node))]
        return (out, *rest)

    def relevance(self, ctx):
        node, cfg = ctx.node, ctx.config
        q, k, v = ctx.inputs[0], ctx.inputs[1], ctx.inputs[2]
        heads = q.shape[-3]
        scale, a, x = self._scores(node, q, k)
        p = masked_softmax(x, -1)  # a fully masked row (left padding) gives 0, as torch's forward does
        ve = _expand_kv(v, heads)
        if cfg.bilinear == "cp":  # CP-LRP: the attention weights P are constant; Q, K (and the mask) get nothing
            _, r_v, _ = held_product_relevance(Matmul(), p, ve, None, ctx.relevance[0], cfg.epsilon, held=0)
            if ve.shape != v.shape:  # fold GQA copies back
                r_v = r_v.unflatten(-3, (v.shape[-3], heads // v.shape[-3])).sum(-3)
            return [None, None, r_v] + [None] * (len(ctx.edges) - 3)
        r_p, r_v, _ = product_relevance(Matmul(), p, ve, None, ctx.relevance[0], cfg, 0.0, True, True, False)
        r_x = softmax_relevance(torch.where(torch.isfinite(x), a, x), p, r_p, -1)  # the mask absorbs m * g
        ke = _expand_kv(k, heads)
        r_q, r_kt, _ = product_relevance(Matmul(scale), q, ke.transpose(-2, -1), None, r_x, cfg, 0.0, True, True,
                                         False)
        r_k = r_kt.transpose(-2, -1)
        if ke.shape != k.shape:  # fold GQA copies back
            g = heads // k.shape[-3]
            r_k = r_k.unflatten(-3, (k.shape[-3], g)).sum(-3)
            r_v = r_v.unflatten(-3, (v.shape[-3], g)).sum(-3)
        out = [r_q, r_k, r_v] + [None] * (len(ctx.edges) - 3)
        return out


__all__ = ["softmax_relevance", "SoftmaxRule", "SDPARule", "stabilize"]
