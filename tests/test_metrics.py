"""dynamiclrp.metrics on toy models with hand-checkable curves.

The main oracle: a model whose output is the sum of a known subset S of m of the n pixels (inputs all ones,
occlusion to 0). With perfect relevance (the indicator of S) and one pixel per step, MoRF falls linearly from m to
0 over the first m/n of the x axis and LeRF stays at m until x = 1 - m/n, then falls to 0, so

    AUC(MoRF) = m² / 2n,   AUC(LeRF) = m(n - m)/n + m² / 2n,   ABPC = m(n - m)/n,
    comprehensiveness = m - m² / 2n,   sufficiency = m² / 2n.
"""
import sys

import pytest
import torch

from dynamiclrp.metrics import (
    METRICS,
    BaselineOcclusion,
    BlurOcclusion,
    Perturbation,
    PerturbationCurves,
    RandomAttribution,
    TokenDeletion,
    TokenReplacement,
    abpc,
    class_score,
    comprehensiveness,
    evaluate,
    gaussian_blur,
    gaussian_kernel,
    next_token_score,
    perturbation_curves,
    pointing_game,
    predicted_class,
    sufficiency,
    tgs,
    token_in_span,
    tps,
)

N_SIDE, SUBSET = 8, (1, 5, 6, 10, 33, 62)  # n = 64 pixels, m = 6


def subset_model(n_side=N_SIDE, subset=SUBSET):
    w = torch.zeros(n_side * n_side, dtype=torch.float64)
    w[list(subset)] = 1.0
    return (lambda x: (x.reshape(x.shape[0], -1).double() * w).sum(1)), w.view(1, 1, n_side, n_side)


ZERO = Perturbation(occlusion=BaselineOcclusion(0.0))


def test_perfect_relevance_gives_the_hand_computed_abpc():
    f, w = subset_model()
    n, m = N_SIDE * N_SIDE, len(SUBSET)
    x = torch.ones(1, 1, N_SIDE, N_SIDE, dtype=torch.float64)
    curves = perturbation_curves(f, x, w, ZERO)
    assert curves.morf.y.shape == (1, n + 1)
    expected_morf = torch.clamp(m - torch.arange(n + 1.0), min=0).double()
    expected_lerf = torch.clamp(torch.arange(n, -1, -1.0), max=m).double()
    torch.testing.assert_close(curves.morf.y[0], expected_morf)
    torch.testing.assert_close(curves.lerf.y[0], expected_lerf)
    torch.testing.assert_close(curves.morf.x[0], torch.arange(n + 1.0).double() / n)
    assert curves.abpc().value == pytest.approx(m * (n - m) / n)  # 5.4375
    assert curves.comprehensiveness().value == pytest.approx(m - m * m / (2 * n))
    assert curves.sufficiency().value == pytest.approx(m * m / (2 * n))
    # the functional forms agree; per_step and steps that divide m give the same (piecewise linear) areas
    assert abpc(f, x, w, ZERO).value == pytest.approx(m * (n - m) / n)
    for p in (Perturbation(occlusion=BaselineOcclusion(0.0), per_step=2),
              Perturbation(occlusion=BaselineOcclusion(0.0), steps=32)):
        c = perturbation_curves(f, x, w, p)
        assert c.morf.y.shape == (1, 33)
        assert c.abpc().value == pytest.approx(m * (n - m) / n)


def test_inverted_relevance_gives_the_negative_and_constant_relevance_zero():
    f, w = subset_model()
    n, m = N_SIDE * N_SIDE, len(SUBSET)
    x = torch.ones(1, 1, N_SIDE, N_SIDE, dtype=torch.float64)
    assert abpc(f, x, -w, ZERO).value == pytest.approx(-m * (n - m) / n)
    # ties keep index order in both directions, so a constant map gives identical curves
    assert abpc(f, x, torch.zeros_like(w), ZERO).value == 0.0
    assert comprehensiveness(f, x, -w, ZERO).value == pytest.approx(m - (m * (n - m) / n + m * m / (2 * n)))
    assert sufficiency(f, x, -w, ZERO).value == pytest.approx(m - m * m / (2 * n))


def test_random_relevance_is_zero_in_expectation():
    f, _ = subset_model()
    n, m = N_SIDE * N_SIDE, len(SUBSET)
    x = torch.ones(500, 1, N_SIDE, N_SIDE, dtype=torch.float64)
    res = abpc(f, x, RandomAttribution(seed=1), Perturbation(occlusion=BaselineOcclusion(0.0), per_step=4),
               max_batch=500 * 32)
    assert res.n == 500
    # E[ABPC] = 0 by symmetry; the spread of one example is about the perfect score, the mean's 20x smaller
    assert abs(res.value) < 4 * res.stderr
    assert res.stderr < 0.05 * m * (n - m) / n
    assert res.scores.std() > 0.3  # and the examples really were ranked differently


def test_channels_are_summed_by_default_and_other_reductions_apply():
    f, w = subset_model()
    x = torch.ones(1, 3, N_SIDE, N_SIDE, dtype=torch.float64)
    g = lambda z: f(z.sum(1, keepdim=True) / 3)  # noqa: E731  the mean over channels of the subset model
    # channel 0 says "subset", channels 1 and 2 say the opposite, more weakly: summed, the subset still wins
    r = torch.cat([3 * w, -w, -w], 1)
    assert abpc(g, x, r, ZERO).value > 0
    assert abpc(g, x, r, Perturbation(occlusion=BaselineOcclusion(0.0), channel_reduction="max")).value > 0
    assert abpc(g, x, -r, ZERO).value < 0
    # a feature-shaped map [B, H, W] is accepted as is
    assert abpc(g, x, w[:, 0], ZERO).value == pytest.approx(abpc(f, x[:, :1], w, ZERO).value)


def test_blur_kernel_sums_to_one_preserves_constants_and_matches_torchvision():
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    k = gaussian_kernel(51, 20.0)
    assert k.shape == (51,)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(k, k.flip(0))
    assert int(k.argmax()) == 25
    for side in (64, 16):  # reflected borders, and replicated ones when the image is smaller than the kernel
        const = torch.full((2, 3, side, side), 0.37, dtype=torch.float64)
        torch.testing.assert_close(gaussian_blur(const), const)
    img = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(img, 51, 20.0), tv_blur(img, [51, 51], [20.0, 20.0]))
    assert BlurOcclusion().kernel_size == 51 and BlurOcclusion().sigma == 20.0
    with pytest.raises(ValueError, match="odd"):
        BlurOcclusion(kernel_size=50)
    with pytest.raises(TypeError, match="TokenReplacement"):
        gaussian_blur(torch.ones(1, 1, 4, 4, dtype=torch.long))


def test_blur_occlusion_writes_the_blurred_pixels_only_where_occluded():
    img = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    seen = []
    rel = torch.zeros(1, 32, 32, dtype=torch.float64)
    rel[0, 3, 4] = 5.0
    curves = perturbation_curves(lambda z: seen.append(z.clone()) or z.sum((1, 2, 3)), img, rel,
                                 Perturbation(occlusion=BlurOcclusion(9, 3.0), per_step=256))
    assert len(seen) == 9 and curves.morf.y.shape == (1, 5)
    blurred = gaussian_blur(img, 9, 3.0)
    first_morf = seen[1][0]
    changed = (first_morf != img[0]).any(0)
    assert changed.sum() == 256 and changed[3, 4]
    torch.testing.assert_close(first_morf[:, changed], blurred[0][:, changed])
    torch.testing.assert_close(first_morf[:, ~changed], img[0][:, ~changed])
    torch.testing.assert_close(seen[-1][0], blurred[0])  # all occluded at the end


def _first_occluded(relevance, patch, pool, side=8):
    seen = []
    x = torch.ones(1, 1, side, side, dtype=torch.float64)
    p = Perturbation(occlusion=BaselineOcclusion(0.0), patch_size=patch, patch_pool=pool, per_step=1)
    curves = perturbation_curves(lambda z: seen.append(z.clone()) or z.sum((1, 2, 3)), x, relevance, p)
    return (seen[1][0, 0] == 0), curves


def test_patch_pooling_ranks_patches_by_max_or_sum():
    r = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    r[0, 0, 1, 2] = 10.0  # top-left patch: max 10, sum 10
    r[0, 0, 4:, 4:] = 1.0  # bottom-right patch: max 1, sum 16
    occluded, curves = _first_occluded(r, 4, "max")
    assert occluded[:4, :4].all() and occluded.sum() == 16
    assert curves.morf.y.shape == (1, 5)  # 4 patches, one per step
    torch.testing.assert_close(curves.morf.x[0], torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    occluded, _ = _first_occluded(r, 4, "sum")
    assert occluded[4:, 4:].all() and occluded.sum() == 16
    # a 6x6 map in 4x4 patches: a 2x2 grid whose border patches are partial
    r6 = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    r6[0, 0, 5, 1] = 3.0
    occluded, curves = _first_occluded(r6, 4, "max", side=6)
    assert occluded[4:, :4].all() and occluded.sum() == 8
    assert curves.morf.y[0, -1] == 0  # fully occluded at the end
    # with a feature mask, a patch holding excluded pixels occludes only the others, and an all-excluded patch none
    seen = []
    fm = torch.ones(1, 8, 8, dtype=torch.bool)
    fm[0, 0, 0] = False
    fm[0, 4:, :4] = False
    p = Perturbation(occlusion=BaselineOcclusion(0.0), patch_size=4, patch_pool="max", per_step=1)
    curves = perturbation_curves(lambda z: seen.append(z.clone()) or z.sum((1, 2, 3)), torch.ones(1, 1, 8, 8), r, p,
                                 feature_mask=fm)
    assert curves.morf.y.shape == (1, 4)  # three eligible patches
    first = seen[1][0, 0] == 0
    assert first[:4, :4].sum() == 15 and not first[0, 0] and first.sum() == 15
    assert curves.morf.y[0].tolist() == [64, 49, 33, 17] and curves.lerf.y[0, -1] == 17


def test_token_deletion_and_replacement():
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    rel = torch.tensor([[0.1, 0.5, -0.2, 0.9, 0.0]])
    seen = []
    f = lambda z: seen.append(z.clone()) or z.double().sum(1)  # noqa: E731
    with pytest.raises(ValueError, match="empty sequence"):
        perturbation_curves(f, ids, rel, Perturbation.tokens())
    seen.clear()
    bos = torch.tensor([[1, 10, 11, 12, 13, 14]])  # BOS stays out of the ranking
    keep = torch.tensor([[False, True, True, True, True, True]])
    curves = perturbation_curves(f, bos, torch.cat([torch.tensor([[5.0]]), rel], 1), Perturbation.tokens(),
                                 feature_mask=keep)
    morf = [s[0].tolist() for s in seen[:6]]
    assert morf == [[1, 10, 11, 12, 13, 14], [1, 10, 11, 12, 14], [1, 10, 12, 14], [1, 12, 14], [1, 12], [1]]
    assert [s[0].tolist() for s in seen[6:]] == [[1, 10, 11, 13, 14], [1, 10, 11, 13], [1, 11, 13], [1, 13], [1]]
    assert curves.morf.y[0].tolist() == [61, 48, 37, 27, 13, 1]
    seen.clear()
    curves = perturbation_curves(f, ids, rel, Perturbation.tokens(token_id=0))
    assert [s[0].tolist() for s in seen[:3]] == [[10, 11, 12, 13, 14], [10, 11, 12, 0, 14], [10, 0, 12, 0, 14]]
    assert curves.morf.y[0].tolist() == [60, 47, 36, 26, 12, 0]
    # a feature mask keeps BOS out: it is never replaced and x counts the other four tokens
    seen.clear()
    keep_bos = torch.tensor([[False, True, True, True, True]])
    rel_bos = torch.tensor([[9.0, 0.5, -0.2, 0.9, 0.0]])
    curves = perturbation_curves(f, ids, rel_bos, Perturbation.tokens(token_id=0), feature_mask=keep_bos)
    assert all(s[0, 0] == 10 for s in seen)
    assert seen[1][0].tolist() == [10, 11, 12, 0, 14]
    torch.testing.assert_close(curves.morf.x[0], torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    # embedding relevance [B, T, D] is reduced over D
    emb = torch.stack([rel, torch.zeros_like(rel)], -1)
    seen.clear()
    perturbation_curves(f, ids, emb, Perturbation.tokens(token_id=0))
    assert seen[1][0].tolist() == [10, 11, 12, 0, 14]
    # deletion needs equal lengths per row
    two = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="same number of deleted tokens"):
        perturbation_curves(f, two, torch.rand(2, 3), Perturbation.tokens(),
                            feature_mask=torch.tensor([[True, True, True], [False, True, True]]))
    with pytest.raises(TypeError, match="integer token ids"):
        perturbation_curves(f, torch.rand(1, 3), torch.rand(1, 3), Perturbation.tokens(token_id=0))


class TinyCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 16 * 16, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_batching_and_stacked_steps_equal_one_by_one():
    model = TinyCNN().double().eval()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    rel = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    target = torch.tensor([0, 3, 1, 4])
    score = class_score(model)
    p = Perturbation.image(per_step=16, kernel_size=7, sigma=2.0)
    batched = perturbation_curves(score, x, rel, p, target)
    stacked = perturbation_curves(score, x, rel, p, target, max_batch=4 * 7)
    single = PerturbationCurves.cat([perturbation_curves(score, x[i:i + 1], rel[i:i + 1], p, target[i:i + 1])
                                     for i in range(4)])
    for other in (stacked, single):
        torch.testing.assert_close(batched.morf.y, other.morf.y)
        torch.testing.assert_close(batched.lerf.y, other.lerf.y)
        torch.testing.assert_close(batched.abpc().scores, other.abpc().scores)
    torch.testing.assert_close(batched.unperturbed, model(x).gather(1, target[:, None])[:, 0].detach())
    # a plain one-argument score function (no target) gives the same curves
    plain = perturbation_curves(lambda z: model(z)[:, 2], x, rel, p)
    torch.testing.assert_close(plain.morf.y, perturbation_curves(score, x, rel, p, 2).morf.y)
    torch.testing.assert_close(plain.morf.y, perturbation_curves(score, x, rel, p, torch.tensor(2)).morf.y)
    # the attribution may be a callable fn(inputs, target): it is called once with the batch
    calls = []
    from_fn = perturbation_curves(score, x, lambda inp, t: calls.append(t) or rel, p, target)
    torch.testing.assert_close(from_fn.morf.y, batched.morf.y)
    assert len(calls) == 1 and calls[0].tolist() == target.tolist()
    # abpc = comprehensiveness - sufficiency, per example
    torch.testing.assert_close(batched.abpc().scores,
                               batched.comprehensiveness().scores - batched.sufficiency().scores)


def test_score_helpers():
    model = TinyCNN().double().eval()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    t = torch.tensor([1, 0, 4])
    logits = model(x).detach()
    torch.testing.assert_close(class_score(model)(x, t), logits.gather(1, t[:, None])[:, 0])
    torch.testing.assert_close(class_score(model, "probability")(x, t), logits.softmax(1).gather(1, t[:, None])[:, 0])
    torch.testing.assert_close(class_score(model, "log_probability")(x, t),
                               logits.log_softmax(1).gather(1, t[:, None])[:, 0])
    # targets and per-example forward arguments are tiled over stacked steps
    torch.testing.assert_close(class_score(model)(torch.cat([x, x]), t.repeat(2)),
                               logits.gather(1, t[:, None])[:, 0].repeat(2))
    assert predicted_class(model, x).tolist() == logits.argmax(1).tolist()
    with pytest.raises(ValueError, match="kind"):
        class_score(model, "prob")

    class TinyLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(20, 8)
            self.out = torch.nn.Linear(8, 20)

        def forward(self, ids, scale=None):
            h = self.emb(ids).cumsum(1)
            if scale is not None:
                h = h * scale[:, None, None]
            return {"logits": self.out(h)}

    lm = TinyLM().double()
    ids = torch.randint(0, 20, (2, 6))
    nxt = torch.tensor([3, 7])
    scale = torch.tensor([1.0, 2.0], dtype=torch.float64)
    full = lm(ids, scale)["logits"].detach()
    score = next_token_score(lm, "probability", scale=scale)
    torch.testing.assert_close(score(ids, nxt), full[:, -1].softmax(-1).gather(1, nxt[:, None])[:, 0])
    torch.testing.assert_close(score(torch.cat([ids, ids]), nxt.repeat(2)),
                               full[:, -1].softmax(-1).gather(1, nxt[:, None])[:, 0].repeat(2))
    assert predicted_class(lm, ids, scale=scale).tolist() == full[:, -1].argmax(-1).tolist()
    # token deletion keeps the last position as the next-token prediction; stacked calls are never made
    rel = torch.randn(2, 6)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[:, 0] = False
    curves = perturbation_curves(next_token_score(lm), ids, rel, Perturbation.tokens(), nxt, feature_mask=keep,
                                 max_batch=100)
    assert curves.morf.y.shape == (2, 6)
    torch.testing.assert_close(curves.morf.y[:, -1], lm(ids[:, :1])["logits"][:, -1].gather(1, nxt[:, None])[:, 0])
    with pytest.raises(ValueError, match="next_token_score"):
        class_score(lm)(ids, nxt)


def test_tps_tgs_on_a_hand_made_example():
    # question tokens 0..3, context 4..9; the question holds the largest relevance, which must be ignored
    question = torch.tensor([[True] * 4 + [False] * 6] * 3)
    rel = torch.tensor([
        [9.0, 9, 9, 9, 0.1, 0.2, 3.0, 2.5, 0.0, 0.1],  # top-1 = 6, top-2 = {6, 7}
        [9.0, 9, 9, 9, 0.1, 0.2, 3.0, 0.0, 2.5, 0.1],  # top-1 = 6, top-2 = {6, 8}
        [9.0, 9, 9, 9, 5.0, 0.2, 3.0, 2.5, 0.0, 0.1],  # top-1 = 4
    ])
    predicted = torch.tensor([[6, 7], [6, 7], [6, 7]])
    gold = torch.tensor([[6, 6], [8, 9], [4, 5]])
    assert tps(rel, predicted, question).scores.tolist() == [1.0, 1.0, 0.0]
    assert tps(rel, predicted, question, k=2).scores.tolist() == [1.0, 0.0, 0.0]
    # a one-token gold span asks top-2 only for the top-1
    assert tgs(rel, gold, question).scores.tolist() == [1.0, 0.0, 1.0]
    assert tgs(rel, gold, question, k=2).scores.tolist() == [1.0, 0.0, 0.0]
    # without masking the question, every top-1 is a question token
    assert tps(rel, predicted).scores.tolist() == [0.0, 0.0, 0.0]
    # strict: only the span's start and end count (a 3-token span [5, 7]: token 6 is inside but not a boundary)
    wide = torch.tensor([[5, 7]] * 3)
    assert token_in_span(rel, wide, question).scores.tolist() == [1.0, 1.0, 0.0]
    assert token_in_span(rel, wide, question, strict=True).scores.tolist() == [0.0, 0.0, 0.0]
    res = tps(rel, predicted, question)
    assert res.value == pytest.approx(2 / 3) and res.higher_is_better and res.name == "tps"
    with pytest.raises(ValueError, match="start > end"):
        tps(rel, torch.tensor([[7, 6]] * 3), question)


def test_pointing_game_hit_miss_tolerance_and_ties():
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[:, 2:4, 2:4] = True
    rel = torch.zeros(3, 2, 10, 10)
    rel[0, 0, 3, 3] = 1.0  # inside
    rel[1, 1, 8, 8] = 1.0  # far outside
    rel[2, 0, 5, 3] = 1.0  # two pixels below the mask
    res = pointing_game(rel, masks)
    assert res.scores.tolist() == [1.0, 0.0, 0.0]
    assert pointing_game(rel, masks, tolerance=2).scores.tolist() == [1.0, 0.0, 1.0]
    assert pointing_game(rel, masks, tolerance=1).scores.tolist() == [1.0, 0.0, 0.0]
    # a constant map has its maximum everywhere: never a hit
    assert pointing_game(torch.zeros(3, 10, 10), masks).scores.tolist() == [0.0, 0.0, 0.0]
    assert res.higher_is_better and res.value == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="empty"):
        pointing_game(rel, torch.zeros(3, 10, 10, dtype=torch.bool))


def test_evaluate_over_batches_matches_direct_calls(monkeypatch):
    model = TinyCNN().double().eval()
    data = [(torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([1, 2])) for _ in range(3)]
    grad_x_input = lambda x, t: torch.func.grad(lambda z: class_score(model)(z, t).sum())(x) * x  # noqa: E731
    methods = {"gxi": grad_x_input, "random": RandomAttribution(0)}
    p = Perturbation.image(per_step=64, kernel_size=7, sigma=2.0)
    ev = evaluate(class_score(model), data, methods, p)
    direct = PerturbationCurves.cat([perturbation_curves(class_score(model), x, grad_x_input, p, t) for x, t in data])
    torch.testing.assert_close(ev.curves["gxi"].morf.y, direct.morf.y)
    summary = ev.summary()
    assert summary["gxi"]["n"] == 6
    assert summary["gxi"]["abpc"] == pytest.approx(direct.abpc().value)
    assert summary["gxi"]["abpc_se"] == pytest.approx(direct.abpc().stderr)
    assert summary["gxi"]["seconds_per_example"] >= 0
    plot = ev.plot_data("morf")
    assert set(plot) == {"gxi", "random"}
    x, y = plot["gxi"]
    assert x[0] == 0 and x[-1] == 1 and y.shape == x.shape == (5,)  # 256 pixels, 64 per step
    assert set(ev.to_dict()["curves"]["random"]) == {"morf", "lerf", "lerf-morf"}
    # without tqdm: silently no bar
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    ev2 = evaluate(class_score(model), data, {"gxi": grad_x_input}, p, progress=True)
    torch.testing.assert_close(ev2.curves["gxi"].lerf.y, ev.curves["gxi"].lerf.y)


def test_metadata_and_validation():
    assert METRICS["abpc"].higher_is_better and METRICS["comprehensiveness"].higher_is_better
    assert not METRICS["sufficiency"].higher_is_better and not METRICS["auc_morf"].higher_is_better
    assert all(info.description for info in METRICS.values())
    f, w = subset_model()
    x = torch.ones(1, 1, N_SIDE, N_SIDE, dtype=torch.float64)
    with pytest.raises(ValueError, match="not both"):
        Perturbation(per_step=2, steps=4)
    with pytest.raises(ValueError, match="patch_pool"):
        Perturbation(patch_pool="mean")
    with pytest.raises(TypeError, match="Occlusion"):
        Perturbation(occlusion="blur")
    with pytest.raises(ValueError, match="does not fit"):
        abpc(f, x, torch.ones(1, 1, 4, 4), ZERO)
    with pytest.raises(ValueError, match="channel_dim=None"):
        abpc(lambda z: z.sum(1), torch.ones(2, 5), torch.ones(2, 5), ZERO)
    with pytest.raises(ValueError, match="NaN"):
        abpc(f, x, torch.full_like(w, float("nan")), ZERO)
    with pytest.raises(ValueError, match="one score per row"):
        abpc(lambda z: z.sum(), x.expand(2, -1, -1, -1), w.expand(2, -1, -1, -1), ZERO)
    with pytest.raises(ValueError, match="broadcast"):
        abpc(f, x, w, Perturbation(occlusion=BaselineOcclusion(torch.zeros(5))))
    assert isinstance(Perturbation.tokens(3).occlusion, TokenReplacement)
    assert isinstance(Perturbation.tokens().occlusion, TokenDeletion)
    p = Perturbation.patches()
    assert (p.patch_size, p.per_step, p.patch_pool, p.occlusion) == (16, 4, "max", BlurOcclusion(51, 20.0))


def test_metrics_never_import_the_engine():
    import ast
    import pathlib

    import dynamiclrp.metrics as metrics

    allowed_parents = set()
    for path in pathlib.Path(metrics.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level > 1 or (node.module or "").startswith("dynamiclrp"):
                    allowed_parents.add((path.name, node.module))
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("dynamiclrp") for a in node.names), path.name
    assert allowed_parents == set(), f"metrics imports from outside its package: {allowed_parents}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_agnostic_on_cuda():
    f, w = subset_model()
    x = torch.ones(2, 1, N_SIDE, N_SIDE, dtype=torch.float64)
    cpu = perturbation_curves(f, x, w.expand(2, -1, -1, -1), ZERO)
    wc = w.cuda()
    fc = lambda z: (z.reshape(z.shape[0], -1) * wc.reshape(1, -1)).sum(1)  # noqa: E731
    gpu = perturbation_curves(fc, x.cuda(), wc.expand(2, -1, -1, -1), Perturbation.image(per_step=1, kernel_size=3))
    assert gpu.morf.y.device.type == "cuda"
    zero_gpu = perturbation_curves(fc, x.cuda(), wc.expand(2, -1, -1, -1), ZERO)
    torch.testing.assert_close(zero_gpu.morf.y.cpu(), cpu.morf.y)
