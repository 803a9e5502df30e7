"""Rules added for op-driven coverage (issue 11): every op directly and through a promise (its forward
recomputation), exact oracles (gradient x input for routing maps, hand-computed splits), the generic fallback,
reused rule classes, and the op-type coverage report."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from dynamiclrp import ConstantRecorder, LRPConfig, propagate
from dynamiclrp.coverage import op_coverage, op_types
from dynamiclrp.errors import UnsupportedOperationError
from dynamiclrp.graph import Graph
from dynamiclrp.rules.elementwise import IDENTITY_OPS
from dynamiclrp.rules.reduction import AvgPoolRule
from dynamiclrp.rules.shape import IndexRule
from dynamiclrp.saved import full_name, op_name

CFG = LRPConfig(epsilon=1e-12)
GRID = torch.rand(2, 3, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2.2 - 1.1
IDX = torch.tensor([0, 2, 2, 3])
_GEN = torch.Generator().manual_seed(2)
BIAS = torch.nn.Parameter(torch.ones(6, dtype=torch.float64))
W_MV = torch.nn.Parameter(torch.rand(6, 36, dtype=torch.float64, generator=_GEN))
W_BMM = torch.nn.Parameter(torch.rand(4, 6, 3, dtype=torch.float64, generator=_GEN))
W_BIL = torch.nn.Parameter(torch.randn(5, 6, 6, dtype=torch.float64, generator=_GEN))
TARGET = torch.rand(2, 4, 6, 6, dtype=torch.float64, generator=_GEN) * 3
CLASS_WEIGHT = torch.rand(4, dtype=torch.float64, generator=_GEN)
LABELS = torch.randint(0, 4, (2, 6, 6), generator=_GEN)


def _index_reduce(h, reduce, include_self):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "index_reduce() is in beta"
        return h.index_reduce(1, torch.tensor([0, 0, 3]), 2 * h[:, 1:], reduce, include_self=include_self)


def _activation():
    """A positive activation ``h`` [2, 4, 6, 6] computed from a leaf ``x`` (so that ``h`` has a producer)."""
    x = (torch.rand(2, 4, 6, 6, dtype=torch.float64) + 0.1).requires_grad_(True)
    return x, x * 1.5


# name -> (autograd node expected, op on h, kind): kind "routing" (exact oracle: gradient x input, since these
# maps are linear with 0/1 Jacobians), "linear" (a bias-free linear map: the epsilon rule is gradient x input up to
# epsilon), "conservative" (sum of relevance = sum of y), "finite" (no exact sum)
OPS = {
    "index_select": ("IndexSelectBackward", lambda h: h.index_select(1, IDX), "routing"),
    "repeat_interleave": ("IndexSelectBackward", lambda h: h.repeat_interleave(torch.tensor([1, 0, 2, 1]), 1),
                          "routing"),
    "unsafe_split": ("UnsafeSplitBackward", lambda h: torch.unsafe_split(h, 3, 2)[1], "routing"),
    "unsafe_split_sizes": ("UnsafeSplitWithSizesBackward", lambda h: torch.unsafe_split_with_sizes(h, [1, 3], 1)[1],
                           "routing"),
    "unsafe_index": ("UnsafeIndexBackward", lambda h: torch.ops.aten._unsafe_index(h, [None, IDX]), "routing"),
    "maximum": ("MaximumBackward", lambda h: torch.maximum(h, h.flip(3)), "routing"),
    "minimum": ("MinimumBackward", lambda h: torch.minimum(h, 2 * h.flip(2)), "routing"),
    "fmax": ("FmaxBackward", lambda h: torch.fmax(h, h.flip(3)), "routing"),
    "fmin": ("FminBackward", lambda h: torch.fmin(h, h.flip(3)), "routing"),
    "tensor_unfold": ("UnfoldBackward", lambda h: h.unfold(3, 3, 2), "routing"),
    "flip": ("FlipBackward", lambda h: h.flip(1, 3), "routing"),
    "pixel_shuffle": ("PixelShuffleBackward", lambda h: F.pixel_shuffle(h, 2), "routing"),
    "pixel_unshuffle": ("PixelUnshuffleBackward", lambda h: F.pixel_unshuffle(h, 2), "routing"),
    "channel_shuffle": ("ChannelShuffleBackward", lambda h: F.channel_shuffle(h, 2), "routing"),
    "rot90": ("Rot90Backward", lambda h: torch.rot90(h, 3, (2, 3)), "routing"),
    "diagonal": ("DiagonalBackward", lambda h: h.diagonal(1, 2, 3), "routing"),
    "diag_embed": ("DiagEmbedBackward", lambda h: torch.diag_embed(h[:, 0], -1), "routing"),
    "tril": ("TrilBackward", lambda h: h.tril(-1), "routing"),
    "triu": ("TriuBackward", lambda h: h.triu(1), "routing"),
    "narrow_copy": ("NarrowCopyBackward", lambda h: h.narrow_copy(2, 1, 3), "routing"),
    "masked_select": ("MaskedSelectBackward", lambda h: h.masked_select(h > 1.0), "routing"),
    "take": ("TakeBackward", lambda h: h.take(torch.tensor([3, 70, 70, 5])), "routing"),
    "reflection_pad1d": ("ReflectionPad1DBackward", lambda h: F.pad(h.flatten(2), (2, 3), mode="reflect"), "routing"),
    "reflection_pad2d": ("ReflectionPad2DBackward", lambda h: F.pad(h, (2, 1, 1, 3), mode="reflect"), "routing"),
    "reflection_pad3d": ("ReflectionPad3DBackward", lambda h: F.pad(h, (1, 1, 1, 1, 1, 2), mode="reflect"),
                         "routing"),
    "replication_pad1d": ("ReplicationPad1DBackward", lambda h: F.pad(h.flatten(2), (2, 3), mode="replicate"),
                          "routing"),
    "replication_pad2d": ("ReplicationPad2DBackward", lambda h: F.pad(h, (2, 1, 1, 3), mode="replicate"),
                          "routing"),
    "replication_pad3d": ("ReplicationPad3DBackward", lambda h: F.pad(h, (1, 1, 1, 1, 1, 2), mode="replicate"),
                          "routing"),
    "amax": ("AmaxBackward", lambda h: h.amax((1, 3)), "routing"),
    "amin": ("AminBackward", lambda h: h.amin(2, keepdim=True), "routing"),
    "adaptive_max_pool2d": ("AdaptiveMaxPool2DBackward", lambda h: F.adaptive_max_pool2d(h, 4), "routing"),
    "adaptive_max_pool3d": ("AdaptiveMaxPool3DBackward", lambda h: F.adaptive_max_pool3d(h, 3), "routing"),
    "fractional_max_pool2d": ("FractionalMaxPool2DBackward", lambda h: F.fractional_max_pool2d(
        h, 2, output_size=3, _random_samples=torch.full((2, 4, 2), 0.5, dtype=torch.float64)), "routing"),
    "fractional_max_pool3d": ("FractionalMaxPool3DBackward", lambda h: F.fractional_max_pool3d(
        h.unsqueeze(1), 2, output_size=2, _random_samples=torch.full((2, 1, 3), 0.5, dtype=torch.float64)),
        "routing"),
    "max_unpool2d": ("MaxUnpool2DBackward", lambda h: F.max_unpool2d(*F.max_pool2d(h, 2, return_indices=True), 2),
                     "routing"),
    "max_unpool3d": ("MaxUnpool3DBackward", lambda h: F.max_unpool3d(
        *F.max_pool3d(h, 2, return_indices=True), 2), "routing"),
    "cummax": ("CummaxBackward", lambda h: h.cummax(2).values, "routing"),
    "cummin": ("CumminBackward", lambda h: h.cummin(3).values, "routing"),
    "aminmax": ("AminmaxBackward", lambda h: torch.aminmax(h, dim=1).max, "routing"),
    "select_scatter": ("SelectScatterBackward", lambda h: h.select_scatter(2 * h[:, 0], 1, 2), "routing"),
    "slice_scatter": ("SliceScatterBackward", lambda h: h.slice_scatter(2 * h[:, :, :2], 2, 3, 5), "routing"),
    "diagonal_scatter": ("DiagonalScatterBackward", lambda h: h.diagonal_scatter(
        3 * h.diagonal(0, 2, 3), 0, 2, 3), "routing"),
    "block_diag": ("BlockDiagBackward", lambda h: torch.block_diag(h[0, 0], 2 * h[1, 1, :3]), "routing"),
    "lazy_clone": ("LazyCloneBackward", lambda h: torch._lazy_clone(h), "routing"),
    "reshape_copy": ("ReshapeCopyBackward", lambda h: torch.ops.aten._reshape_copy(h, [8, 36]), "routing"),
    "lift": ("LiftBackward", lambda h: torch.ops.aten.lift(h), "routing"),
    "clamp_max_tensor": ("ClampMaxBackward", lambda h: torch.clamp_max(h, h.flip(3)), "routing"),
    "clamp_min_tensor": ("ClampMinBackward", lambda h: torch.clamp_min(h, 2 * h.flip(2)), "routing"),
    "put": ("PutBackward", lambda h: h.put(torch.tensor([1, 5, 70]), 2 * h[0, 0, 0, :3]), "routing"),
    "put_accumulate": ("PutBackward", lambda h: h.put(torch.tensor([1, 5, 5]), 2 * h[0, 0, 0, :3], True),
                       "conservative"),
    "unsafe_index_put": ("UnsafeIndexPutBackward", lambda h: torch.ops.aten._unsafe_index_put(
        h, [torch.tensor([0])], 2 * h[1:], False), "routing"),
    "unsafe_index_put_accumulate": ("UnsafeIndexPutBackward", lambda h: torch.ops.aten._unsafe_index_put(
        h, [None, torch.tensor([0, 0])], 2 * h[:, 1:3], True), "conservative"),
    "index_put_impl": ("IndexPutImplBackward", lambda h: torch.ops.aten._index_put_impl_(
        h * 1, [torch.tensor([1])], 2 * h[:1], True), "conservative"),
    "affine_grid": ("AffineGridGeneratorBackward", lambda h: F.affine_grid(h[:, 0, :2, :3], [2, 1, 4, 5],
                                                                           align_corners=False), "linear"),
    "addmv": ("AddmvBackward", lambda h: torch.addmv(BIAS, W_MV, h[0, 0].flatten()), "finite"),
    "addr": ("AddrBackward", lambda h: torch.addr(h[1, 1, 0], h[0, 0, 0], h[0, 1, 1], beta=0.5, alpha=2.0), "finite"),
    "addbmm": ("AddbmmBackward", lambda h: torch.addbmm(h[0, 0, :, :3], h[0], W_BMM), "finite"),
    "pack_padded_sequence": ("PackPaddedSequenceBackward", lambda h: torch.nn.utils.rnn.pack_padded_sequence(
        h[0], torch.tensor([6, 4, 3, 1]), batch_first=True).data, "routing"),
    "bilinear": ("TrilinearBackward", lambda h: F.bilinear(h[0, 0], h[1, 1], W_BIL), "conservative"),
    "index_reduce_amax": ("IndexReduceBackward", lambda h: _index_reduce(h, "amax", True), "routing"),
    "index_reduce_mean": ("IndexReduceBackward", lambda h: _index_reduce(h, "mean", True), "conservative"),
    "index_reduce_mean_no_self": ("IndexReduceBackward", lambda h: _index_reduce(h, "mean", False),
                                  "conservative"),
    "index_reduce_prod": ("IndexReduceBackward", lambda h: _index_reduce(h, "prod", False), "conservative"),
    "frexp": ("FrexpBackward", lambda h: torch.frexp(h).mantissa, "conservative"),
    # in-place and scalar overloads of the families below
    "acosh_": ("AcoshBackward", lambda h: (h * 10).acosh_(), "conservative"),
    "asinh_": ("AsinhBackward", lambda h: (h * 1).asinh_(), "conservative"),
    "atanh_": ("AtanhBackward", lambda h: (h * 0.5).atanh_(), "conservative"),
    "celu_": ("CeluBackward", lambda h: F.celu(h - h.flip(3), 0.5, inplace=True), "finite"),
    "polygamma_": ("PolygammaBackward", lambda h: (h * 1).polygamma_(1), "conservative"),
    "rrelu_": ("RreluWithNoiseBackward", lambda h: F.rrelu(h - h.flip(3), training=True, inplace=True), "finite"),
    "copysign_scalar": ("CopysignBackward", lambda h: torch.copysign(h, -1.0), "conservative"),
    "xlogy_scalar_self": ("XlogyBackward", lambda h: torch.xlogy(2.0, h), "conservative"),
    "xlog1py_scalar_self": ("SpecialXlog1PyBackward", lambda h: torch.special.xlog1py(2.0, h), "conservative"),
    "xlog1py_scalar_other": ("SpecialXlog1PyBackward", lambda h: torch.special.xlog1py(h, 2.0), "conservative"),
    "aten_norm0": ("NormBackward", lambda h: torch.ops.aten.norm(h, 3).reshape(1), "conservative"),
    "aten_norm1": ("NormBackward", lambda h: torch.ops.aten.norm(h, 3, [1, 3], True), "conservative"),
    "aten_norm2": ("NormBackward", lambda h: torch.ops.aten.norm.ScalarOpt_dtype(
        h, 2, dtype=torch.float64).reshape(1), "conservative"),
    "aten_norm3": ("NormBackward", lambda h: torch.ops.aten.norm.ScalarOpt_dim_dtype(
        h, 1, [0], False, dtype=torch.float64), "conservative"),
    # losses (with respect to the prediction)
    "mse_loss": ("MseLossBackward", lambda h: F.mse_loss(h, TARGET), "conservative"),
    "mse_loss_sum": ("MseLossBackward", lambda h: F.mse_loss(h, TARGET, reduction="sum").reshape(1),
                     "conservative"),
    "mse_loss_none": ("MseLossBackward", lambda h: F.mse_loss(h, TARGET, reduction="none"), "conservative"),
    "huber_loss": ("HuberLossBackward", lambda h: F.huber_loss(h, TARGET, delta=0.5).reshape(1), "conservative"),
    "smooth_l1_loss": ("SmoothL1LossBackward", lambda h: F.smooth_l1_loss(h, TARGET, beta=0.5).reshape(1),
                       "conservative"),
    "soft_margin_loss": ("SoftMarginLossBackward", lambda h: F.soft_margin_loss(h, TARGET.sign()).reshape(1),
                         "conservative"),
    "bce": ("BinaryCrossEntropyBackward", lambda h: F.binary_cross_entropy(h / 2, TARGET / 3).reshape(1),
            "conservative"),
    "bce_with_logits": ("BinaryCrossEntropyWithLogitsBackward", lambda h: F.binary_cross_entropy_with_logits(
        h, TARGET / 3, pos_weight=torch.full((6,), 2.0, dtype=torch.float64)).reshape(1), "conservative"),
    "nll_loss": ("NllLossBackward", lambda h: F.nll_loss(h[:, :, 0, 0], torch.tensor([1, 3]), CLASS_WEIGHT
                                                         ).reshape(1), "conservative"),
    "nll_loss_ignore": ("NllLoss2DBackward", lambda h: F.nll_loss(h[:, :, 0], torch.tensor([[1, 3, 0, 0, 2, 1]] * 2),
                                                                ignore_index=0, reduction="sum").reshape(1),
                        "conservative"),
    "nll_loss_2d": ("NllLoss2DBackward", lambda h: F.nll_loss(h, LABELS, reduction="none"), "conservative"),
    # distances
    "cdist": ("CdistBackward", lambda h: torch.cdist(h[0, 0], h[1, 1].flip(0)), "conservative"),
    "cdist_p1_batched": ("CdistBackward", lambda h: torch.cdist(h[0], h[1, :, :3], p=1), "conservative"),
    "cdist_inf": ("CdistBackward", lambda h: torch.cdist(h[0], 2 * h[1], p=float("inf")), "conservative"),
    "euclidean_dist": ("EuclideanDistBackward", lambda h: torch._euclidean_dist(h[0, 0], h[1, 1]), "finite"),
    "dist": ("DistBackward", lambda h: torch.dist(h[0], 2 * h[1], 3).reshape(1), "conservative"),
    "pdist": ("PdistBackward", lambda h: torch.pdist(h[0, 0], 1.5), "conservative"),
    # proportional sums and reductions
    "grid_sample": ("GridSampler2DBackward", lambda h: F.grid_sample(h, GRID, align_corners=False), "finite"),
    "grid_sample_nearest": ("GridSampler2DBackward", lambda h: F.grid_sample(h, GRID, mode="nearest",
                                                                            padding_mode="border"), "conservative"),
    "grid_sample_3d": ("GridSampler3DBackward", lambda h: F.grid_sample(
        h.unsqueeze(1), torch.cat([GRID, GRID[..., :1]], -1).unsqueeze(1), padding_mode="border",
        align_corners=True), "conservative"),
    "lanczos": ("UpsampleLanczos2DAaBackward", lambda h: torch.ops.aten._upsample_lanczos2d_aa(h, [4, 3], False),
                "finite"),
    "trace": ("TraceBackward", lambda h: h[0, 0].trace().reshape(1), "conservative"),
    "nansum": ("NansumBackward", lambda h: h.nansum(2), "conservative"),
    "vector_norm": ("LinalgVectorNormBackward", lambda h: torch.linalg.vector_norm(h, dim=-1), "conservative"),
    "vector_norm_inf": ("LinalgVectorNormBackward", lambda h: torch.linalg.vector_norm(h, float("inf"), (1, 2)),
                        "conservative"),
    "norm_all": ("LinalgVectorNormBackward", lambda h: h.norm(p=3).reshape(1), "conservative"),
    "var": ("VarBackward", lambda h: h.var(2), "conservative"),
    "std": ("StdBackward", lambda h: h.std((1, 3), keepdim=True), "conservative"),
    "var_mean": ("VarMeanBackward", lambda h: (lambda vm: vm[0] + vm[1])(torch.var_mean(h, -1)), "conservative"),
    "std_mean": ("StdMeanBackward", lambda h: torch.std_mean(h, 1)[0], "conservative"),
    "logsumexp": ("LogsumexpBackward", lambda h: h.logsumexp(1), "conservative"),
    "logcumsumexp": ("LogcumsumexpBackward", lambda h: h.logcumsumexp(2), "conservative"),
    "logaddexp": ("LogaddexpBackward", lambda h: torch.logaddexp(h, 2 * h.flip(3)), "conservative"),
    "logaddexp2": ("Logaddexp2Backward", lambda h: torch.logaddexp2(h, h.flip(3)), "conservative"),
    "prod": ("ProdBackward", lambda h: h.prod(1), "conservative"),
    "prod_all": ("ProdBackward", lambda h: h[0, 0, :2].prod().reshape(1), "conservative"),
    "cumprod": ("CumprodBackward", lambda h: h.cumprod(3), "conservative"),
    # elementwise
    "addcmul": ("AddcmulBackward", lambda h: torch.addcmul(h.flip(1), h, h, value=0.5), "conservative"),
    "addcdiv": ("AddcdivBackward", lambda h: torch.addcdiv(h.flip(1), h, h * 2, value=2.0), "conservative"),
    "glu": ("GluBackward", lambda h: F.glu(h, 1), "conservative"),
    "prelu": ("PreluKernelBackward", lambda h: F.prelu(h - h.flip(3), torch.nn.Parameter(
        torch.full((4,), 0.25, dtype=torch.float64))), "conservative"),
    "lerp": ("LerpBackward", lambda h: torch.lerp(h, 2 * h.flip(3), 0.3), "conservative"),
    "lerp_tensor_weight": ("LerpBackward", lambda h: torch.lerp(h, 2 * h.flip(3), torch.sigmoid(h)),
                           "conservative"),
    "hypot": ("HypotBackward", lambda h: torch.hypot(h, h.flip(3)), "conservative"),
    "copysign": ("CopysignBackward", lambda h: torch.copysign(h, h - h.flip(3)), "conservative"),
    "fmod": ("FmodBackward", lambda h: torch.fmod(h, h.flip(3) * 0.5), "conservative"),
    "remainder": ("RemainderBackward", lambda h: torch.remainder(h, h.flip(3) * 0.5), "conservative"),
    "ldexp": ("LdexpBackward", lambda h: torch.ldexp(h, torch.tensor([2])), "conservative"),
    "nextafter": ("NextafterBackward", lambda h: torch.nextafter(h, h.flip(3)), "conservative"),
    "xlogy": ("XlogyBackward", lambda h: torch.xlogy(h, h.flip(3) * 2), "conservative"),
    "xlogy_scalar_other": ("XlogyBackward", lambda h: torch.xlogy(h, 3.0), "conservative"),
    "xlog1py": ("SpecialXlog1PyBackward", lambda h: torch.special.xlog1py(h, h.flip(3)), "conservative"),
}


@pytest.mark.parametrize("name", list(OPS))
def test_rule_direct_and_through_a_promise(name):
    node_name, op, kind = OPS[name]
    x, h = _activation()
    y = op(h)
    assert node_name in {op_name(n) for n in Graph.capture(y).order}

    # direct: relevance of y itself, back to h
    (r_h,) = propagate(y, [h], relevance=y.detach(), config=CFG)
    assert torch.isfinite(r_h).all()
    if kind in ("routing", "linear"):  # a linear map: epsilon-LRP = gradient x input (exactly when routing)
        (grad,) = torch.autograd.grad(y.sum(), h, retain_graph=True)
        torch.testing.assert_close(r_h, grad * h.detach(), rtol=1e-9, atol=1e-12 if kind == "routing" else 1e-8)
    if kind in ("routing", "linear", "conservative"):
        torch.testing.assert_close(r_h.sum(), y.detach().sum(), rtol=1e-9, atol=1e-12)

    # through a promise: out = y + c needs y's value, rebuilt by forward chaining through the op
    c = (torch.rand_like(y.detach()) + 0.5).requires_grad_(True)
    out = y + c
    (r_h2,) = propagate(out, [h], relevance=out.detach(), config=CFG)
    yd = y.detach()
    r_y = yd.abs() / (yd.abs() + c.detach().abs()) * out.detach()
    (expected,) = propagate(op(h), [h], relevance=r_y, config=CFG)
    torch.testing.assert_close(r_h2, expected, rtol=1e-8, atol=1e-12)


def _identity_input(name):
    """An input in the op's domain (shape [2, 3, 4])."""
    t = torch.rand(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    if name in ("AcoshBackward", "MvlgammaBackward"):
        return t + 2.0
    if name in ("AcosBackward", "AsinBackward", "AtanhBackward", "ErfinvBackward", "LogitBackward",
                "SpecialNdtriBackward"):
        return t * 0.8 + 0.1
    if name in ("Log10Backward", "Log1PBackward", "Log2Backward", "DigammaBackward", "LgammaBackward",
                "PolygammaBackward", "SpecialEntrBackward"):
        return t + 0.5
    return t * 4 - 2


#: ops of the identity table that take an argument (the others are called as the table's forward does)
WITH_ARGS = {
    "PolygammaBackward": lambda h: torch.polygamma(1, h),
    "MvlgammaBackward": lambda h: torch.mvlgamma(h, 2),
    "RreluWithNoiseBackward": lambda h: F.rrelu(h, training=True),
    "ClampMaxBackward0": lambda h: torch.clamp_max(h, 0.3),
    "CeluBackward": lambda h: F.celu(h, 0.7),
    "HardshrinkBackward": lambda h: F.hardshrink(h, 0.3),
    "SoftshrinkBackward": lambda h: F.softshrink(h, 0.3),
    "LogitBackward": lambda h: torch.logit(h, 1e-3),
}


def _identity_op(name):
    if name in WITH_ARGS:
        return WITH_ARGS[name]
    fwd = IDENTITY_OPS[name][2]
    return lambda h: fwd(None, h)


@pytest.mark.parametrize("name", list(IDENTITY_OPS))
def test_identity_family(name):
    """Every unary elementwise op of the identity table: ``R_x = R_y`` exactly, directly and when a promise
    needs the op's output (the rebuilt value must be the op's real output)."""
    torch.manual_seed(0)
    x = _identity_input(name).requires_grad_(True)
    h = x * 1.0
    op = _identity_op(name)
    y = op(h)
    assert full_name(y.grad_fn) == name or op_name(y.grad_fn) == name, full_name(y.grad_fn)
    r = torch.rand_like(y.detach()) + 0.1
    (r_h,) = propagate(y, [h], relevance=r, config=CFG)
    torch.testing.assert_close(r_h, r)
    c = (torch.rand_like(y.detach()) + 0.5).requires_grad_(True)
    out = y + c
    (r_h2,) = propagate(out, [h], relevance=out.detach(), config=CFG)
    yd = y.detach()
    torch.testing.assert_close(r_h2, yd.abs() / (yd.abs() + c.detach().abs()) * out.detach())


def test_maximum_ties_split_evenly_and_constants_keep_their_wins():
    a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([1.0, 5.0, 0.0], dtype=torch.float64, requires_grad=True)
    ra, rb = propagate(torch.maximum(a, b), [a, b], relevance=torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64),
                       config=CFG)
    assert ra.tolist() == [1.0, 0.0, 6.0] and rb.tolist() == [1.0, 4.0, 0.0]
    (ra,) = propagate(torch.fmin(a, torch.tensor([0.0, 9.0, 9.0], dtype=torch.float64)), [a],
                      relevance=torch.ones(3, dtype=torch.float64), config=CFG)
    assert ra.tolist() == [0.0, 1.0, 1.0]


def test_addcmul_resmlp_affine_and_addcdiv_by_hand():
    """timm ResMLP's ``Affine``: ``addcmul(beta, alpha, x)``: the bias ``beta`` keeps its proportional share, the
    product's share all goes to ``x`` (``alpha`` is a parameter)."""
    beta = torch.nn.Parameter(torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))
    alpha = torch.nn.Parameter(torch.tensor([2.0, 0.5, 3.0], dtype=torch.float64))
    x = torch.tensor([1.0, 4.0, -2.0], dtype=torch.float64, requires_grad=True)
    y = torch.addcmul(beta, alpha, x)
    r = torch.tensor([3.0, 3.0, 6.0], dtype=torch.float64)
    (rx,) = propagate(y, [x], relevance=r, config=CFG)
    torch.testing.assert_close(rx, torch.tensor([2.0, 2.0 * 3 / 3, 6.0], dtype=torch.float64))
    (rx,) = propagate(y, [x], relevance=r, config=LRPConfig(epsilon=1e-12, add_rule="z"))
    torch.testing.assert_close(rx, torch.tensor([2.0, 2.0 * 3 / 1, 6.0], dtype=torch.float64))
    # two activations: the product part is split evenly; addcdiv's part goes to the numerator
    a, b, s = (torch.tensor([2.0], dtype=torch.float64, requires_grad=True) for _ in range(3))
    ra, rb, rs = propagate(torch.addcmul(s, a, b), [a, b, s], relevance=torch.tensor([6.0], dtype=torch.float64),
                           config=CFG)
    assert (ra.item(), rb.item(), rs.item()) == (2.0, 2.0, 2.0)  # c_s = 2, c_p = 4
    ra, rb, rs = propagate(torch.addcdiv(s, a, b), [a, b, s], relevance=torch.tensor([6.0], dtype=torch.float64),
                           config=CFG)
    assert (ra.item(), rb.item(), rs.item()) == (2.0, 0.0, 4.0)  # c_s = 2, c_p = 2 / 2 = 1


def test_products_with_a_bias_by_hand():
    """``addmv``/``addbmm`` beside a parameter with a zero bias: the epsilon rule, i.e. gradient x input; ``addr``
    of two activations: the uniform rule, ``R_a_i = a_i sum_j b_j R_ij / (2 z_ij)``."""
    v = torch.rand(5, dtype=torch.float64, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(3, 5, dtype=torch.float64))
    zero = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    y = torch.addmv(zero, w, v, alpha=2.0)
    (rv,) = propagate(y, [v], relevance=y.detach(), config=CFG)
    (grad,) = torch.autograd.grad(y.sum(), v)
    torch.testing.assert_close(rv, grad * v.detach())
    b1 = torch.rand(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b2 = torch.nn.Parameter(torch.randn(2, 4, 5, dtype=torch.float64))
    y = torch.addbmm(torch.zeros(3, 5, dtype=torch.float64, requires_grad=True), b1, b2)
    (rb1,) = propagate(y, [b1], relevance=y.detach(), config=CFG)
    (grad,) = torch.autograd.grad(y.sum(), b1)
    torch.testing.assert_close(rb1, grad * b1.detach())
    a = torch.rand(3, dtype=torch.float64, requires_grad=True)
    b = torch.rand(4, dtype=torch.float64, requires_grad=True)
    y = torch.addr(torch.zeros(3, 4, dtype=torch.float64, requires_grad=True), a, b)
    ra, rb = propagate(y, [a, b], relevance=y.detach(), config=CFG)
    torch.testing.assert_close(ra, 0.5 * a.detach() * b.detach().sum())
    torch.testing.assert_close(rb, 0.5 * b.detach() * a.detach().sum())


_A = torch.ops.aten
W_CONV = torch.nn.Parameter(torch.randn(3, 4, 3, 3, dtype=torch.float64, generator=_GEN))
B_CONV = torch.nn.Parameter(torch.randn(3, dtype=torch.float64, generator=_GEN))
W_TBC = torch.nn.Parameter(torch.randn(3, 6, 5, dtype=torch.float64, generator=_GEN))
B_TBC = torch.nn.Parameter(torch.randn(5, dtype=torch.float64, generator=_GEN))
# backend convolution node -> (the op, the same convolution through torch.convolution)
CONVS = {
    "SlowConv2DBackward0": (lambda h: _A.thnn_conv2d(h, W_CONV, [3, 3], B_CONV, [1, 1], [1, 1]),
                            lambda h: F.conv2d(h, W_CONV, B_CONV, 1, 1)),
    "SlowConv3DBackward0": (lambda h: _A.slow_conv3d(h.unsqueeze(2), W_CONV.unsqueeze(2), [1, 3, 3], B_CONV,
                                                     [1, 2, 1], [0, 1, 1]),
                            lambda h: F.conv3d(h.unsqueeze(2), W_CONV.unsqueeze(2), B_CONV, (1, 2, 1), (0, 1, 1))),
    "SlowConvDilated2DBackward0": (lambda h: _A.slow_conv_dilated2d(h, W_CONV, [3, 3], B_CONV, [1, 1], [2, 2],
                                                                    [2, 2]),
                                   lambda h: F.conv2d(h, W_CONV, B_CONV, 1, 2, 2)),
    "SlowConvDilated3DBackward0": (lambda h: _A.slow_conv_dilated3d(h.unsqueeze(2), W_CONV.unsqueeze(2),
                                                                    [1, 3, 3], None, [1, 1, 1], [0, 1, 1],
                                                                    [1, 2, 2]),
                                   lambda h: F.conv3d(h.unsqueeze(2), W_CONV.unsqueeze(2), None, 1, (0, 1, 1),
                                                      (1, 2, 2))),
    "SlowConvTranspose2DBackward0": (lambda h: _A.slow_conv_transpose2d(h, W_CONV.transpose(0, 1), [3, 3], B_CONV,
                                                                        [2, 2], [1, 1], [1, 1], [1, 1]),
                                     lambda h: F.conv_transpose2d(h, W_CONV.transpose(0, 1), B_CONV, 2, 1, 1)),
    "SlowConvTranspose3DBackward0": (lambda h: _A.slow_conv_transpose3d(
        h.unsqueeze(2), W_CONV.transpose(0, 1).unsqueeze(2), [1, 3, 3], B_CONV, [1, 1, 1], [0, 1, 1], [0, 0, 0],
        [1, 1, 1]), lambda h: F.conv_transpose3d(h.unsqueeze(2), W_CONV.transpose(0, 1).unsqueeze(2), B_CONV, 1,
                                                 (0, 1, 1))),
    "ConvTbcBackward0": (lambda h: torch.conv_tbc(h[0], W_TBC, B_TBC, 1),
                         lambda h: F.conv1d(h[0].permute(1, 2, 0), W_TBC.permute(2, 1, 0), B_TBC,
                                            padding=1).permute(2, 0, 1)),
    "MkldnnConvolutionBackward0": (lambda h: _A.mkldnn_convolution(h.float(), W_CONV.float(), B_CONV.float(),
                                                                   [1, 1], [1, 1], [1, 1], 1),  # float32 only
                                   lambda h: F.conv2d(h.float(), W_CONV.float(), B_CONV.float(), 1, 1)),
}


@pytest.mark.parametrize("name", list(CONVS))
def test_backend_convolutions_match_aten_convolution(name):
    """Each backend's convolution node gets exactly the relevance of the same convolution through
    ``torch.convolution`` (epsilon and gamma), directly and through a promise (``y + c``)."""
    op, ref = CONVS[name]
    x, h = _activation()
    y, z = op(h), ref(h)
    assert full_name(y.grad_fn) == name
    torch.testing.assert_close(y, z)
    c = (torch.rand_like(z.detach()) + 0.5).requires_grad_(True)
    for cfg in (CFG, LRPConfig(epsilon=1e-12, gamma_conv=0.25)):
        torch.testing.assert_close(propagate(y, [h], relevance=y.detach(), config=cfg)[0],
                                   propagate(z, [h], relevance=z.detach(), config=cfg)[0])
        torch.testing.assert_close(propagate(y + c, [h], relevance=(y + c).detach(), config=cfg)[0],
                                   propagate(z + c, [h], relevance=(z + c).detach(), config=cfg)[0])


def test_bilinear_layer_uniform_rule_by_hand():
    """``nn.Bilinear`` without bias: ``z = x1^T W x2``; the uniform rule gives each activation half of
    gradient x input (``R_x1 = x1 * dz/dx1 / 2`` for ``R = z``), conservative; a constant second operand makes it
    the epsilon rule of a linear map, gradient x input."""
    layer = torch.nn.Bilinear(4, 3, 5, bias=False).double()
    x1 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    y = layer(x1, x2)
    r1, r2 = propagate(y, [x1, x2], relevance=y.detach(), config=CFG)
    g1, g2 = torch.autograd.grad(y.sum(), [x1, x2])
    torch.testing.assert_close(r1, 0.5 * g1 * x1.detach())
    torch.testing.assert_close(r2, 0.5 * g2 * x2.detach())
    y = layer(x1, x2.detach())
    (r1,) = propagate(y, [x1], relevance=y.detach(), config=CFG)
    (g1,) = torch.autograd.grad(y.sum(), x1)
    torch.testing.assert_close(r1, g1 * x1.detach())


def test_vector_norm_and_variance_shares_by_hand():
    x = torch.tensor([[3.0, -4.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([5.0, 3.0], dtype=torch.float64)
    (rx,) = propagate(torch.linalg.vector_norm(x, dim=1), [x], relevance=r, config=CFG)
    torch.testing.assert_close(rx, torch.tensor([[5 * 9 / 25, 5 * 16 / 25, 0.0], [1.0, 1.0, 1.0]],
                                                dtype=torch.float64))
    (rx,) = propagate(torch.linalg.vector_norm(x, 1, dim=1), [x], relevance=r, config=CFG)
    torch.testing.assert_close(rx[0], torch.tensor([5 * 3 / 7, 5 * 4 / 7, 0.0], dtype=torch.float64))
    (rx,) = propagate(torch.linalg.vector_norm(x, float("inf"), dim=1), [x], relevance=r, config=CFG)
    assert rx.tolist() == [[0.0, 5.0, 0.0], [1.0, 1.0, 1.0]]
    v = torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64, requires_grad=True)  # mean 3, deviations^2 4, 1, 9
    (rv,) = propagate(v.var(), [v], relevance=torch.tensor(14.0, dtype=torch.float64), config=CFG)
    torch.testing.assert_close(rv, torch.tensor([4.0, 1.0, 9.0], dtype=torch.float64))
    (rv,) = propagate(v.prod(), [v], relevance=torch.tensor(3.0, dtype=torch.float64), config=CFG)
    assert rv.tolist() == [1.0, 1.0, 1.0]
    (rv,) = propagate(v.cumprod(0), [v], relevance=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), config=CFG)
    torch.testing.assert_close(rv, torch.tensor([1 + 1 + 1, 1 + 1, 1.0], dtype=torch.float64))


def test_losses_by_hand():
    """MSE ``mean((x - t)^2)`` with squared errors 1 and 4: the loss 2.5 splits 0.5 / 2.0; the NLL of log-probs
    -1 and -4 at the targets: 0.5 / 2.0 at the target logits, nothing elsewhere or to the target."""
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    t = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    rx, rt = propagate(F.mse_loss(x, t), [x, t], relevance=torch.tensor(2.5, dtype=torch.float64), config=CFG)
    assert rx.tolist() == [0.5, 2.0] and rt.tolist() == [0.0, 0.0]
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]], dtype=torch.float64, requires_grad=True)
    (rl,) = propagate(F.nll_loss(logp, torch.tensor([0, 1])), [logp], relevance=torch.tensor(2.5, dtype=torch.float64),
                      config=CFG)
    assert rl.tolist() == [[0.5, 0.0], [0.0, 2.0]]


def test_distances_by_hand():
    """``||a - b||_2`` with ``a - b = (3, -4)``: the norm gives the coordinates 9/25 and 16/25 of ``R``, the
    subtraction splits each between ``a`` and ``b`` by ``|a_k| / (|a_k| + |b_k|)``."""
    a = torch.tensor([[4.0, 1.0]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[1.0, 5.0]], dtype=torch.float64, requires_grad=True)
    for y in (torch.cdist(a, b), torch.dist(a, b).reshape(1, 1), torch.pdist(torch.cat([a, b])).reshape(1, 1)):
        ra, rb = propagate(y, [a, b], relevance=torch.tensor([[25.0]], dtype=torch.float64), config=CFG)
        torch.testing.assert_close(ra, torch.tensor([[9 * 4 / 5, 16 * 1 / 6]], dtype=torch.float64))
        torch.testing.assert_close(rb, torch.tensor([[9 * 1 / 5, 16 * 5 / 6]], dtype=torch.float64))


def test_logsumexp_routes_by_softmax_weights_and_lerp_hypot_glu_by_hand():
    x = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64, requires_grad=True)
    (rx,) = propagate(x.logsumexp(0), [x], relevance=torch.tensor(8.0, dtype=torch.float64), config=CFG)
    torch.testing.assert_close(rx, torch.tensor([2.0, 6.0], dtype=torch.float64))
    a = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    ra, rb = propagate(torch.lerp(a, b, 0.5), [a, b], relevance=torch.tensor([4.0], dtype=torch.float64),
                       config=CFG)
    assert (ra.item(), rb.item()) == (1.0, 3.0)
    ra, rb = propagate(torch.hypot(a, b), [a, b], relevance=torch.tensor([10.0], dtype=torch.float64), config=CFG)
    torch.testing.assert_close(torch.cat([ra, rb]), torch.tensor([1.0, 9.0], dtype=torch.float64))
    g = torch.tensor([[1.0, 2.0, -3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    (rg,) = propagate(F.glu(g), [g], relevance=torch.tensor([[2.0, 6.0]], dtype=torch.float64), config=CFG)
    assert rg.tolist() == [[1.0, 3.0, 1.0, 3.0]]


def test_grid_sample_matches_explicit_interpolation_matrix_and_grid_gets_nothing():
    """For a fixed grid, ``y = L x`` with ``L``'s bilinear weights: the abs rule is ``|x| * L^T(R / L|x|)``;
    a grid in the graph (a flow field) gets no relevance."""
    x = torch.randn(1, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    grid = (GRID[:1] * 1.0).requires_grad_(True)
    y = F.grid_sample(x, grid, align_corners=True)
    (rel, rgrid) = propagate(y, [x, grid], relevance=y.detach(), config=CFG)
    L = torch.autograd.functional.jacobian(lambda t: F.grid_sample(t, GRID[:1], align_corners=True),
                                           x.detach()).reshape(15, 20)
    c = x.detach().reshape(20).abs()
    expected = c * (L.T @ (y.detach().reshape(15) / (L @ c)))
    torch.testing.assert_close(rel.reshape(20), expected)
    assert (L >= 0).all() and not rgrid.any()


BATCH_NORMS = {
    "BatchNormNoUpdateBackward0": lambda h, w, b, m, v: torch.ops.aten._batch_norm_no_update(
        h, w, b, m, v, 0.1, 1e-5)[0],
    "NativeBatchNormLegitNoTrainingBackward0": lambda h, w, b, m, v:
        torch.ops.aten._native_batch_norm_legit_no_training(h, w, b, m, v, 0.1, 1e-5)[0],
    "BatchNormWithUpdateBackward0": lambda h, w, b, m, v: torch.ops.aten._batch_norm_with_update(
        h, w, b, m.clone(), v.clone(), 0.1, 1e-5)[0],
    "NativeBatchNormLegitBackward0": lambda h, w, b, m, v: torch.ops.aten._native_batch_norm_legit(
        h, w, b, m.clone(), v.clone(), True, 0.1, 1e-5)[0],
    "NativeBatchNormLegitBackward1": lambda h, w, b, m, v: torch.ops.aten._native_batch_norm_legit(
        h, w, b, True, 0.1, 1e-5)[0],
}


@pytest.mark.parametrize("name", list(BATCH_NORMS))
def test_batch_norm_entry_points_match_native_batch_norm(name):
    """Each batch norm node gives the relevance of ``F.batch_norm`` (``NativeBatchNormBackward0``) in the same mode:
    running statistics for the eval-mode entry points, the batch's for the training ones."""
    x, h = _activation()
    w = torch.nn.Parameter(torch.rand(4, dtype=torch.float64) + 0.5)
    b = torch.nn.Parameter(torch.rand(4, dtype=torch.float64))
    m, v = torch.rand(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    y = BATCH_NORMS[name](h, w, b, m, v)
    assert full_name(y.grad_fn) == name
    training = name in ("BatchNormWithUpdateBackward0", "NativeBatchNormLegitBackward0",
                        "NativeBatchNormLegitBackward1")
    ref = F.batch_norm(h, m.clone(), v.clone(), w, b, training=training, eps=1e-5)
    torch.testing.assert_close(y, ref)
    ours = propagate(y * 1, [h], relevance=y.detach(), config=CFG)[0]
    expected = propagate(ref * 1, [h], relevance=ref.detach(), config=CFG)[0]
    torch.testing.assert_close(ours, expected)


def test_threshold_value_is_read_from_the_forward_pass():
    """``F.threshold(x, t, v)``: identity rule; ``v`` (not kept by autograd) comes from the recorded call, so the
    promise of ``y + c`` rebuilds ``y`` exactly; unrecorded, the rebuilt entries are unknown and fail loudly."""
    x, h = _activation()
    c = (torch.rand_like(h.detach()) + 0.5).requires_grad_(True)
    for inplace in (False, True):
        with ConstantRecorder() as rec:
            y = F.threshold(h * 1, 0.8, 2.5, inplace=inplace)
            out = y + c
        assert full_name(y.grad_fn) == f"ThresholdBackward{int(inplace)}"
        (r_h,) = propagate(out, [h], relevance=out.detach(), config=CFG, constants=rec.calls)
        yd = y.detach()
        torch.testing.assert_close(r_h, yd / (yd + c.detach()) * out.detach())
        with pytest.raises(Exception, match="AddBackward0"):
            propagate(out, [h], relevance=out.detach(), config=CFG)


SCALAR_ARGS = {
    "FmodBackward0": lambda h: torch.fmod(h, 0.7),
    "RemainderBackward0": lambda h: h % 0.7,
    "RoundBackward1": lambda h: torch.round(h, decimals=1),
    "NanToNumBackward0": lambda h: torch.nan_to_num(h.masked_fill(h > 1.2, float("inf")), posinf=5.0),
}


@pytest.mark.parametrize("name", list(SCALAR_ARGS))
def test_scalar_arguments_are_read_from_the_forward_pass(name):
    """Identity rule; the scalar autograd does not keep comes from the recorded call, so the promise of ``y + c``
    rebuilds ``y`` exactly; unrecorded, the rebuilt entries are unknown and fail loudly."""
    x, h = _activation()
    c = (torch.rand(2, 4, 6, 6, dtype=torch.float64) + 0.5).requires_grad_(True)
    with ConstantRecorder() as rec:
        y = SCALAR_ARGS[name](h)
        out = y + c
    assert full_name(y.grad_fn) == name
    (r_h,) = propagate(out, [h], relevance=out.detach(), config=CFG, constants=rec.calls)
    yd = y.detach()
    expected = yd.abs() / (yd.abs() + c.detach()) * out.detach()
    if name == "NanToNumBackward0":  # entries filled by masked_fill get nothing
        expected = expected.masked_fill(h.detach() > 1.2, 0.0)
    torch.testing.assert_close(r_h, expected)
    with pytest.raises(Exception, match="AddBackward0"):
        propagate(out, [h], relevance=out.detach(), config=CFG)


RANDOM_FILLS = {
    "UniformBackward0": lambda t: t.uniform_(), "NormalBackward0": lambda t: t.normal_(),
    "CauchyBackward0": lambda t: t.cauchy_(), "ExponentialBackward0": lambda t: t.exponential_(),
    "GeometricBackward0": lambda t: t.geometric_(0.5), "LogNormalBackward0": lambda t: t.log_normal_(),
    "RandomBackward0": lambda t: t.random_(2, 5), "RandomBackward1": lambda t: t.random_(5),
    "RandomBackward2": lambda t: t.random_(), "BernoulliBackward1": lambda t: t.bernoulli_(t.detach() * 0.5),
    "BernoulliBackward2": lambda t: t.bernoulli_(0.3),
}
SAMPLES = {
    "BernoulliBackward0": lambda h: torch.bernoulli(h / 2), "NormalBackward1": lambda h: torch.normal(h, 1.0),
    "NormalBackward2": lambda h: torch.normal(0.0, h), "NormalBackward3": lambda h: torch.normal(h, 2 * h),
    "PoissonBackward0": lambda h: torch.poisson(h), "StandardGammaBackward0": lambda h: torch._standard_gamma(h),
}


@pytest.mark.parametrize("name", list(RANDOM_FILLS) + list(SAMPLES))
def test_random_draws(name):
    """In-place random fills pass nothing back (the output ignores ``x``'s values); samples pass their relevance to
    the parameter they were drawn with (identity). A promise that needs a draw's value fails, naming the op --
    except where autograd kept it (``_standard_gamma``'s result)."""
    x, h = _activation()
    h = h / 2
    y = RANDOM_FILLS[name](h * 1) if name in RANDOM_FILLS else SAMPLES[name](h)
    assert full_name(y.grad_fn) == name
    r = torch.rand(y.shape, dtype=torch.float64) + 0.5
    (r_h,) = propagate(y * 1, [h], relevance=r, config=CFG)
    torch.testing.assert_close(r_h, torch.zeros_like(r) if name in RANDOM_FILLS else r)
    c = (torch.rand(y.shape, dtype=torch.float64) + 0.5).requires_grad_(True)
    out = y + c
    if name == "StandardGammaBackward0":
        (r_h,) = propagate(out, [h], relevance=out.detach(), config=CFG)
        yd = y.detach()
        torch.testing.assert_close(r_h, yd / (yd + c.detach()) * out.detach())
    else:
        with pytest.raises(NotImplementedError, match=name):
            propagate(out, [h], relevance=out.detach(), config=CFG)


def test_renorm_is_an_identity_rule():
    x, h = _activation()
    u = h - h.flip(3)  # both signs
    for op in (lambda t: torch.renorm(t, 2, 1, 3.0), lambda t: torch.renorm(t, 1, 0, 10.0)):
        y = op(u)
        c = (torch.rand_like(y.detach()) + 0.5).requires_grad_(True)
        r = torch.rand_like(y.detach())
        torch.testing.assert_close(propagate(y, [u], relevance=r, config=CFG)[0], r)
        out = y + c
        (r_u,) = propagate(out, [u], relevance=out.detach(), config=CFG)
        yd = y.detach()
        torch.testing.assert_close(r_u, yd.abs() / (yd.abs() + c.detach()) * out.detach())


COMPARISONS = {"EqBackward0": lambda t: t.eq_(0.25), "NeBackward0": lambda t: t.ne_(0.25),
               "GeBackward0": lambda t: t.ge_(0.9), "GtBackward0": lambda t: t.gt_(0.9),
               "LeBackward0": lambda t: t.le_(0.9), "LtBackward0": lambda t: t.lt_(0.9),
               "EqBackward1": lambda t: t.eq_(t.flip(3)), "NeBackward1": lambda t: t.ne_(t.flip(3)),
               "GeBackward1": lambda t: t.ge_(2 * t.flip(3)), "GtBackward1": lambda t: t.gt_(2 * t.flip(3)),
               "LeBackward1": lambda t: t.le_(2 * t.flip(3)), "LtBackward1": lambda t: t.lt_(2 * t.flip(3))}


@pytest.mark.parametrize("name", list(COMPARISONS))
def test_comparisons_are_step_functions_of_the_difference(name):
    """``x.gt_(o)``: the identity rule against a scalar (read from the recorded call for promises); against a
    tensor the difference's split ``|x| / (|x| + |o|)``."""
    x, h = _activation()
    c = (torch.rand(2, 4, 6, 6, dtype=torch.float64) + 0.5).requires_grad_(True)
    with ConstantRecorder() as rec:
        y = COMPARISONS[name](h * 1)
        out = y + c
    assert full_name(y.grad_fn) == name
    r = torch.rand_like(y.detach()) + 0.5
    (r_h,) = propagate(y, [h], relevance=r, config=CFG)
    if name.endswith("0"):
        torch.testing.assert_close(r_h, r)
    else:
        (rr,) = propagate(y, [h], relevance=r, config=CFG)
        hd, scale = h.detach(), (1.0 if name.startswith(("Eq", "Ne")) else 2.0)
        share = hd / (hd + scale * hd.flip(3))
        torch.testing.assert_close(rr, share * r + ((1 - share) * r).flip(3))
    (r_h2,) = propagate(out, [h], relevance=out.detach(), config=CFG, constants=rec.calls)
    yd = y.detach()
    (expected,) = propagate(y, [h], relevance=yd.abs() / (yd.abs() + c.detach()) * out.detach(), config=CFG)
    torch.testing.assert_close(r_h2, expected)


def test_grid_sampler_cpu_fallback_matches_grid_sample():
    """``_grid_sampler_2d_cpu_fallback`` (float32 only) computes ``grid_sample``: same output, same relevance."""
    x = torch.rand(2, 4, 6, 6, requires_grad=True)
    h, grid = x * 1.5, GRID.float()
    y = torch._grid_sampler_2d_cpu_fallback(h, grid, 0, 1, False)
    z = F.grid_sample(h, grid, padding_mode="border", align_corners=False)
    assert full_name(y.grad_fn) == "GridSampler2DCpuFallbackBackward0"
    torch.testing.assert_close(y, z)
    c = (torch.rand_like(z.detach()) + 0.5).requires_grad_(True)
    for a, b in ((y, z), (y + c, z + c)):  # directly and through a promise
        torch.testing.assert_close(propagate(a, [h], relevance=a.detach())[0],
                                   propagate(b, [h], relevance=b.detach())[0])


def test_fallback_explains_an_op_without_a_rule_exactly_when_it_is_linear_and_warns_once():
    """``aten._unsafe_masked_index`` (no rule; ``where(mask, x[idx], 0)``) is linear: the fallback (the epsilon rule
    of the node's own linearisation) gives gradient x input, and a promise through it (``y + c``) rebuilds ``y``
    exactly."""
    torch.manual_seed(0)
    x = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    h = x * 2
    mask = torch.tensor([True, False, True, True])[:, None]
    y = torch.ops.aten._unsafe_masked_index(h, mask, [torch.tensor([0, 4, 2, 2])], 0.0)
    assert "UnsafeMaskedIndexBackward" in {op_name(n) for n in Graph.capture(y).order}
    with pytest.raises(UnsupportedOperationError, match="UnsafeMaskedIndexBackward0"):
        propagate(y, [x], relevance=y.detach(), config=CFG)
    warn = LRPConfig(epsilon=1e-12, unsupported="warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (r_x,) = propagate(y, [x], relevance=y.detach(), config=warn)
    assert len([w for w in caught if "UnsafeMaskedIndexBackward0" in str(w.message)]) == 1
    (grad,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    torch.testing.assert_close(r_x, grad * x.detach())
    c = (torch.rand(4, 3, dtype=torch.float64) + 0.5).requires_grad_(True)
    out = y + c
    with pytest.warns(UserWarning, match="UnsafeMaskedIndexBackward0"):
        (r2,) = propagate(out, [x], relevance=out.detach(), config=warn)
    yd = y.detach()
    r_y = yd / (yd + c.detach()) * out.detach()
    (grad,) = torch.autograd.grad(y, x, torch.where(yd == 0, 0.0, r_y / yd))
    torch.testing.assert_close(r2, grad * x.detach())


def test_fallback_on_a_nonlinear_op_conserves():
    """``linalg.cross`` has no rule: the fallback is the epsilon rule of its linearisation, whose denominator is
    ``z = J_a a + J_b b`` itself (here ``2 y``, the product being bilinear), so the relevance is conserved."""
    a = torch.rand(3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.rand(3, 3, dtype=torch.float64, requires_grad=True)
    y = torch.linalg.cross(a * 1, b * 1)
    assert "LinalgCrossBackward0" in {full_name(n) for n in Graph.capture(y).order}
    with pytest.warns(UserWarning, match="LinalgCrossBackward0"):
        ra, rb = propagate(y, [a, b], relevance=y.detach(),
                           config=LRPConfig(epsilon=1e-12, unsupported="warn"))
    torch.testing.assert_close(ra.sum() + rb.sum(), y.detach().sum())


def test_reusing_a_builtin_rule_class_for_another_op():
    """``rule_overrides={"IndexSelectBackward": IndexRule()}``: a routing rule reused for another routing op works
    (its forward falls back to ``J x`` where the op lacks the saved values it reads) and gives the built-in
    result; a non-routing rule that reads a value the op never saved fails naming the value and the op."""
    x, h = _activation()
    y = h.index_select(1, IDX)
    c = (torch.rand_like(y.detach()) + 0.5).requires_grad_(True)
    out = y + c
    cfg = LRPConfig(epsilon=1e-12, rule_overrides={"IndexSelectBackward": IndexRule()})
    (ours,) = propagate(out, [h], relevance=out.detach(), config=cfg)
    (builtin,) = propagate(out, [h], relevance=out.detach(), config=CFG)
    torch.testing.assert_close(ours, builtin)
    z = F.avg_pool2d(h, 2).flip(2) * 2
    with pytest.raises(AttributeError, match=r"FlipBackward0 has no saved value 'self' \(it saved: dims\)"):
        propagate(z, [h], relevance=z.detach(), config=LRPConfig(rule_overrides={"FlipBackward": AvgPoolRule()}))


def test_op_type_coverage_report_and_cli(capsys):
    from dynamiclrp.__main__ import main

    names = op_types()
    assert len(names) > 400 and "AddcmulBackward0" in names and not any("BackwardBackward" in n for n in names)
    report = op_coverage()
    assert report.total == len(names)
    assert report.covered["IndexSelectBackward0"] == "IndexSelectRule"
    assert report.covered["GridSampler2DBackward0"] == "GridSampleRule"
    missing = {n for names_ in report.missing.values() for n in names_}
    assert missing.isdisjoint(report.covered) and len(missing) + len(report.covered) == report.total
    assert "Atan2Backward0" in missing and "SparseAddmmBackward0" in report.missing["sparse / nested layouts"]
    assert report.fraction > 0.68
    from dynamiclrp.rules.base import RoutingRule

    more = op_coverage(LRPConfig(rule_overrides={"Atan2Backward0": RoutingRule()}))
    assert len(more.covered) == len(report.covered) + 1
    assert main(["coverage", "--ops"]) == 0
    printed = capsys.readouterr().out
    assert f"{len(report.covered)} of {report.total} first-order autograd node types" in printed
    assert "linear algebra" in printed
