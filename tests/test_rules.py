"""Every rule family, in both situations it meets: propagated directly, and passed through by a promise branch
(which needs the op's forward recomputation). The second must equal a two-step computation with the activation
at hand, which catches a wrong ``forward`` as surely as a wrong rule."""
import pytest
import torch
import torch.nn.functional as F

from dynamiclrp import ConstantRecorder, LRPConfig, NonFiniteRelevanceError, propagate
from dynamiclrp.api import seed_relevance
from dynamiclrp.engine import Engine
from dynamiclrp.graph import Graph
from dynamiclrp.saved import num_outputs, op_name

SCATTER_INDEX = torch.tensor([[0, 5, 7], [1, 3, 9]])
SCATTER_INDEX_TWICE = torch.tensor([[0, 5, 5], [9, 3, 9]])

# name -> (autograd node expected in the graph, op applied to a [2, 4, 6, 6] activation h, conservative?)
OPS = {
    "view": ("ViewBackward", lambda h: h.view(2, -1), True),
    "reshape_T": ("TBackward", lambda h: h.reshape(8, 36).t(), True),
    "transpose": ("TransposeBackward", lambda h: h.transpose(1, 3), True),
    "permute": ("PermuteBackward", lambda h: h.permute(0, 2, 3, 1), True),
    "expand": ("ExpandBackward", lambda h: h[:, :1].expand(2, 3, 6, 6), True),
    "repeat": ("RepeatBackward", lambda h: h.repeat(1, 2, 1, 1), True),
    "squeeze_unsqueeze": ("SqueezeBackward", lambda h: h.unsqueeze(0).squeeze(0), True),
    "slice": ("SliceBackward", lambda h: h[:, 1:3, ::2], False),
    "select": ("SelectBackward", lambda h: h[:, 2], False),
    "index": ("IndexBackward", lambda h: h[:, [0, 2, 2]], False),
    "gather": ("GatherBackward", lambda h: h.flatten(1).gather(1, torch.tensor([[0, 5, 7], [1, 1, 9]])), False),
    "cat": ("CatBackward", lambda h: torch.cat([h, 2 * h], 1), True),
    "stack": ("StackBackward", lambda h: torch.stack([h[:, 0], h[:, 1]], 1), False),
    "unbind": ("UnbindBackward", lambda h: h.unbind(1)[2], False),
    "split": ("SplitBackward", lambda h: h.split(2, 1)[1], False),
    "split_sizes": ("SplitWithSizesBackward", lambda h: h.split([1, 3], 1)[1], False),
    "max_dim": ("MaxBackward", lambda h: h.max(1).values, True),
    "max_all": ("MaxBackward", lambda h: h.max().reshape(1), True),
    "maxpool": ("MaxPool2DWithIndicesBackward", lambda h: F.max_pool2d(h, 2), True),
    "avgpool": ("AvgPool2DBackward", lambda h: F.avg_pool2d(h, 2), True),
    "adaptive_avgpool": ("AdaptiveAvgPool2DBackward", lambda h: F.adaptive_avg_pool2d(h, 3), True),
    "sum": ("SumBackward", lambda h: h.sum((2, 3)), True),
    "mean": ("MeanBackward", lambda h: h.mean(-1), True),
    "cumsum": ("CumsumBackward", lambda h: h.cumsum(2), False),
    "relu": ("ReluBackward", lambda h: torch.relu(h - h.mean()), True),
    "gelu": ("GeluBackward", lambda h: F.gelu(h), True),
    "silu": ("SiluBackward", lambda h: F.silu(h), True),
    "tanh": ("TanhBackward", lambda h: torch.tanh(h), True),
    "sigmoid": ("SigmoidBackward", lambda h: torch.sigmoid(h), True),
    "exp": ("ExpBackward", lambda h: torch.exp(h), True),
    "log": ("LogBackward", lambda h: torch.log(h.clamp(min=0.1)), True),
    "sqrt": ("SqrtBackward", lambda h: torch.sqrt(h), True),
    "rsqrt": ("RsqrtBackward", lambda h: torch.rsqrt(h.clamp(min=0.1)), True),
    "pow": ("PowBackward", lambda h: h ** 2, True),
    "neg": ("NegBackward", lambda h: -h, True),
    "mul_const": ("MulBackward", lambda h: h * 3.0, True),
    "mul_two_activations": ("MulBackward", lambda h: h * torch.sigmoid(h), True),
    "div_const": ("DivBackward", lambda h: h / 4.0, True),
    "softmax": ("SoftmaxBackward", lambda h: torch.softmax(h, -1), False),
    "layer_norm": ("NativeLayerNormBackward", lambda h: F.layer_norm(h, (6,)), False),
    "group_norm": ("NativeGroupNormBackward", lambda h: F.group_norm(h, 2), False),
    "masked_fill": ("MaskedFillBackward", lambda h: h.masked_fill(h > 1.5, 0.0), False),
    "where": ("WhereBackward", lambda h: torch.where(h > 1.0, h, 2 * h), True),
    "pad": ("ConstantPadNdBackward", lambda h: F.pad(h, (1, 1)), True),
    "unfold": ("Im2ColBackward", lambda h: F.unfold(h, 2), True),
    "fold": ("Col2ImBackward", lambda h: F.fold(h.reshape(2, 16, 9), (4, 4), 2), True),
    "roll": ("RollBackward", lambda h: torch.roll(h, (1, -2), (2, 3)), True),
    "as_strided_pool": ("AsStridedBackward", lambda h: F.adaptive_avg_pool2d(
        h.contiguous(memory_format=torch.channels_last), 1), True),
    "clone": ("CloneBackward", lambda h: h.clone(), True),
    "to_copy": ("ToCopyBackward", lambda h: h.to(torch.float32).to(torch.float64), True),
    "bmm_bilinear": ("BmmBackward", lambda h: torch.bmm(h.flatten(2), h.flatten(2).transpose(1, 2)), False),
    "topk": ("TopkBackward", lambda h: h.topk(3, dim=1).values, False),
    "sort": ("SortBackward", lambda h: h.sort(dim=-1, descending=True).values, True),
    "index_add": ("IndexAddBackward", lambda h: h.index_add(1, torch.tensor([0, 0, 3]), 2 * h[:, 1:4]), False),
    "index_put": ("IndexPutBackward", lambda h: h.index_put((torch.tensor([1]), torch.tensor([0, 3])), 2 * h[0, :2]),
                  True),
    "index_put_accumulate": ("IndexPutBackward", lambda h: h.index_put(
        (torch.tensor([0, 1, 1]),), h[:1] * 2, accumulate=True), True),
    "masked_scatter": ("MaskedScatterBackward", lambda h: h.masked_scatter(h > 1.0, 2 * h), True),
    "index_copy": ("IndexCopyBackward", lambda h: h.index_copy(1, torch.tensor([0, 2]), 2 * h[:, 1:3]), True),
    "index_fill": ("IndexFillBackward", lambda h: h.index_fill(1, torch.tensor([0, 2]), 0.5), False),
    "scatter": ("ScatterBackward", lambda h: h.flatten(1).scatter(1, SCATTER_INDEX, 2 * h.flatten(1)[:, 10:13]),
                True),
    "scatter_value": ("ScatterBackward", lambda h: h.flatten(1).scatter(1, SCATTER_INDEX, 0.5), False),
    "scatter_add": ("ScatterAddBackward", lambda h: h.flatten(1).scatter_add(1, SCATTER_INDEX_TWICE,
                                                                           2 * h.flatten(1)[:, 10:13]), True),
    "scatter_reduce_sum": ("ScatterReduceBackward", lambda h: h.flatten(1).scatter_reduce(
        1, SCATTER_INDEX_TWICE, 2 * h.flatten(1)[:, 10:13], "sum", include_self=False), True),
    "scatter_reduce_amax": ("ScatterReduceBackward", lambda h: h.flatten(1).scatter_reduce(
        1, SCATTER_INDEX_TWICE, 2 * h.flatten(1)[:, 10:13], "amax"), True),
    "zero": ("ZeroBackward", lambda h: (h * 1).zero_() + h[:, :1], False),
    "upsample_nearest": ("UpsampleNearest2DBackward", lambda h: F.interpolate(h, scale_factor=2), True),
    "upsample_bilinear": ("UpsampleBilinear2DBackward", lambda h: F.interpolate(h, size=(9, 4), mode="bilinear"),
                          True),
    "upsample_bicubic_aa": ("UpsampleBicubic2DAaBackward", lambda h: F.interpolate(
        h, size=(3, 5), mode="bicubic", antialias=True), False),
    "upsample_linear": ("UpsampleLinear1DBackward", lambda h: F.interpolate(
        h.flatten(2), scale_factor=1.5, mode="linear", align_corners=True), True),
    "sdpa": ("ScaledDotProductFlashAttentionForCpuBackward",
             lambda h: F.scaled_dot_product_attention(h, h * 0.5, h, is_causal=True), False),
}


def _activation():
    x = torch.rand(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.nn.Parameter(torch.rand(4, 4, 1, 1, dtype=torch.float64))
    return x, torch.relu(F.conv2d(x, w))


# Ops whose fill value autograd does not keep: recomputed entries are NaN-marked, and an add that consumes them
# must fail loudly rather than return a number built on a guess.
UNKNOWN_FILL = {"masked_fill", "pad", "index_fill", "scatter_value"}


@pytest.mark.parametrize("name", list(OPS))
def test_rule_direct_and_through_a_promise(name):
    node_name, op, conservative = OPS[name]
    cfg = LRPConfig(epsilon=1e-12)
    x, h = _activation()
    y = op(h)
    names = {op_name(n) for n in Graph.capture(y).order}
    assert node_name in names, names

    # direct: relevance of y itself, back to h
    (r_h,) = propagate(y, [h], relevance=y.detach(), config=cfg)
    assert torch.isfinite(r_h).all()
    if conservative:
        assert torch.allclose(r_h.sum(), y.detach().sum(), rtol=1e-6)

    # through a promise: out = y + c needs y's value, rebuilt by forward chaining through the op
    c = torch.rand_like(y.detach()) + 0.5
    c.requires_grad_(True)
    out = y + c
    if name in UNKNOWN_FILL:
        with pytest.raises(NonFiniteRelevanceError, match="AddBackward0"):
            propagate(out, [h], relevance=out.detach(), config=cfg)
        return
    (r_h2,) = propagate(out, [h], relevance=out.detach(), config=cfg)
    yd = y.detach()
    r_y = yd.abs() / (yd.abs() + c.detach().abs()) * out.detach()
    (expected,) = propagate(op(h), [h], relevance=r_y, config=cfg)
    assert torch.allclose(r_h2, expected, rtol=1e-8, atol=1e-12)


FILLS = {
    "masked_fill": lambda h: h.masked_fill(h > 1.5, 0.25),
    "masked_fill_tensor": lambda h: h.masked_fill(h > 1.5, torch.tensor(0.25, dtype=torch.float64)),
    "where_scalar": lambda h: torch.where(h > 1.0, h, 2.0),
    "pad_default": lambda h: F.pad(h, (1, 1)),
    "pad_value": lambda h: F.pad(h, (1, 2, 0, 1), value=3.0),
    "index_fill": lambda h: h.index_fill(1, torch.tensor([0, 2]), 0.5),
    "scatter_value": lambda h: h.flatten(1).scatter(1, SCATTER_INDEX, 0.5),
    "fill": lambda h: (h * 1).fill_(0.5) + h,
}


@pytest.mark.parametrize("name", list(FILLS))
def test_fill_values_recorded_in_the_forward_pass_rebuild_exactly(name):
    """Fill values autograd does not keep (masked_fill's, where's scalar, padding) are read from the recorded
    forward pass: the promise that rebuilds ``y`` for ``y + c`` then gives exactly the two-step result, where
    unrecorded values fail loudly (``UNKNOWN_FILL`` above)."""
    op, cfg = FILLS[name], LRPConfig(epsilon=1e-12)
    x, h = _activation()
    c = (torch.rand_like(op(h).detach()) + 0.5).requires_grad_(True)
    with ConstantRecorder() as rec:
        y = op(h)
        out = y + c
    (r_h,) = propagate(out, [h], relevance=out.detach(), config=cfg, constants=rec.calls)
    yd = y.detach()
    r_y = yd.abs() / (yd.abs() + c.detach().abs()) * out.detach()
    with ConstantRecorder() as again:
        y2 = op(h)
    (expected,) = propagate(y2, [h], relevance=r_y, config=cfg, constants=again.calls)
    assert torch.isfinite(r_h).all()
    torch.testing.assert_close(r_h, expected, rtol=1e-8, atol=1e-12)


def test_interpolation_matches_explicit_matrix():
    """Bilinear interpolation is ``y = L x``; with the matrix ``L`` written out, the abs rule reads
    ``R_x = |x| * L^T (R_y / (L |x|))``."""
    x = torch.randn(1, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    y = F.interpolate(x, size=(5, 7), mode="bilinear", align_corners=False)
    (rel,) = propagate(y, [x], relevance=y.detach(), config=LRPConfig(epsilon=1e-12))
    L = torch.autograd.functional.jacobian(
        lambda t: F.interpolate(t, size=(5, 7), mode="bilinear", align_corners=False), x.detach()).reshape(35, 12)
    c = x.detach().reshape(12).abs()
    expected = c * (L.T @ (y.detach().reshape(35) / (L @ c)))
    torch.testing.assert_close(rel.reshape(12), expected)
    assert (L >= 0).all()


def test_moe_topk_routing_sends_relevance_to_chosen_experts_only():
    """A router's top-k picks entries of its scores: only the picked entries receive relevance."""
    scores = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    values, idx = scores.topk(2, dim=-1)
    (rel,) = propagate(values, [scores], relevance=values.detach(), config=LRPConfig(epsilon=1e-12))
    picked = torch.zeros(5, 4, dtype=torch.bool).scatter(1, idx, True)
    assert (rel[~picked] == 0).all()
    torch.testing.assert_close(rel[picked], scores.detach()[picked])


def test_grouped_mm_equals_one_epsilon_rule_per_expert():
    """``grouped_mm`` (MoE experts in one call) is, per expert, ``z_g = x_g @ W_g``: its relevance equals the
    epsilon rule applied to each expert's rows separately."""
    torch.manual_seed(0)
    x = torch.randn(7, 4, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(3, 4, 8))  # grouped_mm wants 16-byte aligned strides
    offs = torch.tensor([2, 2, 7], dtype=torch.int32)  # expert 1 gets no rows
    z = torch._grouped_mm(x, w, offs=offs)
    cfg = LRPConfig(epsilon=1e-6)
    (rel,) = propagate(z, [x], relevance=z.detach(), config=cfg)
    expected = torch.zeros_like(x)
    for g, (lo, hi) in enumerate([(0, 2), (2, 2), (2, 7)]):
        xg, zg = x.detach()[lo:hi], z.detach()[lo:hi]
        expected[lo:hi] = xg * ((zg / (zg + cfg.epsilon * (2 * (zg >= 0) - 1))) @ w.detach()[g].T)
    torch.testing.assert_close(rel, expected)


def _attention_einsum(x, q):
    return torch.einsum("bqk,bkd->bqd", torch.einsum("bqd,bkd->bqk", q, x).softmax(-1), x)


def _attention_matmul(x, q):
    return (q @ x.transpose(1, 2)).softmax(-1) @ x


# einsum decomposes into permute/unsqueeze/reshape around bmm (or sum): its relevance must equal that of the same
# contraction written with matmuls, for linear maps, bilinear attention, a dot product and a three-operand path.
EINSUM = {
    "linear": (lambda x, q, w: torch.einsum("bnd,ed->bne", x, w), lambda x, q, w: x @ w.T, "epsilon"),
    "attention": (lambda x, q, w: _attention_einsum(x, q), lambda x, q, w: _attention_matmul(x, q), "epsilon"),
    "dot": (lambda x, q, w: torch.einsum("bnd,bnd->bn", x, q), lambda x, q, w: (x * q).sum(-1), "z"),
    "three_operands": (lambda x, q, w: torch.einsum("bnd,ed,bme->bnm", x, w, q[..., :3]),
                       lambda x, q, w: (x @ w.T) @ q[..., :3].transpose(1, 2), "epsilon"),
}


@pytest.mark.parametrize("name", list(EINSUM))
def test_einsum_paths_match_explicit_matmuls(name):
    path, explicit, add_rule = EINSUM[name]
    torch.manual_seed(0)
    x, q = (torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    w = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    cfg = LRPConfig(epsilon=1e-12, add_rule="abs" if add_rule == "epsilon" else "z")
    y, y2 = path(x, q, w), explicit(x, q, w)
    torch.testing.assert_close(y, y2)
    assert "BmmBackward" in {op_name(n) for n in Graph.capture(y).order}
    ours = propagate(y, [x, q], relevance=y.detach(), config=cfg)
    expected = propagate(y2, [x, q], relevance=y2.detach(), config=cfg)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    if name == "linear":  # exact oracle: epsilon-LRP of a bias-free linear map is gradient x input
        (grad,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(ours[0], grad * x.detach())


def test_all_zero_addends_split_evenly_and_zero_addends_get_exactly_nothing():
    """Abs rule edge cases, exact: where every addend is zero the relevance is split evenly among them; a zero
    addend beside non-zero ones gets exactly 0 (no tiny numbers, which would turn into slow subnormals)."""
    cfg = LRPConfig(epsilon=1e-12)
    t = torch.tensor
    a, b = t([0.0, 0.0, 0.0], requires_grad=True), t([0.0, 2.0, -1.0], requires_grad=True)
    ra, rb = propagate(a + b, [a, b], relevance=t([1.0, 1.0, 1.0]), config=cfg)
    assert ra.tolist() == [0.5, 0.0, 0.0] and rb.tolist() == [0.5, 1.0, 1.0]

    x = t([[0.0, 0.0, 0.0], [0.0, 1.0, -3.0]], requires_grad=True)
    (rx,) = propagate(x.sum(1), [x], relevance=t([3.0, 4.0]), config=cfg)
    assert rx.tolist() == [[1.0, 1.0, 1.0], [0.0, 1.0, 3.0]]

    c = t([0.0, 0.0, 2.0], requires_grad=True)
    (rc,) = propagate(c.cumsum(0), [c], relevance=t([1.0, 2.0, 4.0]), config=cfg)
    assert rc.tolist() == [2.0, 1.0, 4.0]

    base, src = torch.zeros(3, requires_grad=True), t([0.0, 5.0], requires_grad=True)
    y = base.index_add(0, t([0, 1]), src)
    rbase, rsrc = propagate(y, [base, src], relevance=t([2.0, 5.0, 3.0]), config=cfg)
    assert rbase.tolist() == [1.0, 0.0, 3.0] and rsrc.tolist() == [1.0, 5.0]


def test_relu_network_relevance_has_no_subnormal_numbers():
    """ReLU zeros meet residual additions and pooling sums everywhere in a ResNet; no relevance at any node may
    be a subnormal float (such values are meaningless here and 10-100x slower to compute with on CPUs)."""
    from dynamiclrp.zoo import ensure_torchvision_importable

    ensure_torchvision_importable()
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    out = model(torch.randn(1, 3, 32, 32, requires_grad=True))
    graph = Graph.capture(out)
    taps = [(n, k) for n in graph.order for k in range(1 if op_name(n) == "AccumulateGrad" else num_outputs(n))]
    result = Engine(graph, LRPConfig(), taps=taps).run(seed_relevance(out, 1))
    tiny = torch.finfo(torch.float32).tiny
    subnormal = {op_name(n) for (n, _k), r in result.taps.items()
                 if r is not None and bool(((r != 0) & (r.abs() < tiny)).any())}
    assert not subnormal, subnormal
