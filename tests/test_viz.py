"""dynamiclrp.viz: the content of what is drawn -- heatmap pixels, overlays, grids, PNG bytes, HTML spans and
tooltips, ANSI codes, token cleaning, curves, the notebook view -- with hand-computed expectations."""
import base64
import html
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn as nn

from dynamiclrp import LRP, viz

matplotlib.use("Agg")  # the viz figures never use pyplot; this only guards against a display backend

WHITE, BLACK, RED, BLUE = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)


def _decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


# ------------------------------------------------------------------------------------------------ colour scale


@pytest.mark.parametrize("name,center", [("seismic", WHITE), ("bwr", WHITE), ("coldnhot", BLACK)])
def test_zero_is_the_centre_colour_and_ends_are_red_and_blue(name, center):
    r = np.array([[0.0, 3.0, 1.5], [-3.0, 0.0, -1.5]])
    h = viz.heatmap(r, cmap=name)
    assert h.shape == (2, 3, 3) and h.min() >= 0 and h.max() <= 1
    np.testing.assert_allclose(h[0, 0], center)
    np.testing.assert_allclose(h[1, 1], center)
    pos, neg = h[0, 2], h[1, 2]
    assert pos[0] > pos[2] + 0.4 and neg[2] > neg[0] + 0.4  # positive red-dominant, negative blue-dominant
    if name == "bwr":
        np.testing.assert_allclose(h[0, 1], RED)
        np.testing.assert_allclose(h[1, 0], BLUE)


def test_symmetric_scale_hand_values():
    # bwr: t = (r / m + 1) / 2 with m = max|r| = 4; r = -1 -> t = 0.375 -> 3/4 of the way from blue to white
    h = viz.heatmap(np.array([[-1.0, 0.0, 2.0, 4.0]]), cmap="bwr")
    np.testing.assert_allclose(h[0, 0], (0.75, 0.75, 1.0))
    np.testing.assert_allclose(h[0, 1], WHITE)
    np.testing.assert_allclose(h[0, 2], (1.0, 0.5, 0.5))
    np.testing.assert_allclose(h[0, 3], RED)
    # the same magnitude is equally far from the centre on both sides: bwr(-r) is bwr(r) with red/blue swapped
    r = np.random.default_rng(0).normal(size=(5, 7))
    np.testing.assert_allclose(viz.heatmap(-r, cmap="bwr"), viz.heatmap(r, cmap="bwr")[..., ::-1], atol=1e-12)
    t = viz.symmetric_positions(np.array([-2.0, 2.0, 0.5, -0.5]))
    np.testing.assert_allclose(np.abs(t - 0.5), [0.5, 0.5, 0.125, 0.125])


def test_all_zero_map_is_uniform_centre_and_nan_raises():
    np.testing.assert_allclose(viz.heatmap(np.zeros((3, 3))), np.ones((3, 3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        viz.heatmap(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="percentile"):
        viz.heatmap(np.ones((2, 2)), percentile=0)
    with pytest.raises(ValueError, match="unknown colour map"):
        viz.heatmap(np.ones((2, 2)), cmap="no-such-map")


def test_percentile_clipping_and_explicit_vmax():
    r = np.concatenate([np.linspace(-1, 1, 99), [100.0]]).reshape(10, 10)
    m = np.percentile(np.abs(r), 90)
    assert viz.robust_max(r, 90) == pytest.approx(m)
    h = viz.heatmap(r, cmap="bwr", percentile=90)
    np.testing.assert_allclose(h.reshape(-1, 3)[-1], RED)  # the outlier is clipped to the end
    np.testing.assert_allclose(h, viz.heatmap(r, cmap="bwr", vmax=m))
    # without clipping the outlier washes everything else out to near white
    plain = viz.heatmap(r, cmap="bwr")
    assert np.abs(plain.reshape(-1, 3)[:-1] - 1).max() < 0.011
    assert np.abs(h.reshape(-1, 3)[:-1] - 1).max() > 0.9


def test_matplotlib_colormap_name_and_custom_map():
    cm = viz.get_cmap("viridis")
    np.testing.assert_allclose(cm(0.0), matplotlib.colormaps["viridis"](0.0)[:3])
    custom = viz.ColorMap("gw", ((0.0, (0.0, 1.0, 0.0)), (1.0, (1.0, 1.0, 1.0))))
    np.testing.assert_allclose(viz.heatmap(np.array([[-1.0, 1.0]]), cmap=custom)[0], [(0, 1, 0), (1, 1, 1)])
    with pytest.raises(ValueError, match="rise from 0 to 1"):
        viz.ColorMap("bad", ((0.2, (0, 0, 0)), (1.0, (1, 1, 1))))


# ------------------------------------------------------------------------------------------------ channels


def test_channel_reductions_hand_values():
    r = np.zeros((3, 1, 2))
    r[:, 0, 0] = [1.0, -3.0, 0.5]
    r[:, 0, 1] = [-2.0, 1.0, 0.0]
    np.testing.assert_allclose(viz.reduce_channels(r, "sum"), [[-1.5, -1.0]])
    np.testing.assert_allclose(viz.reduce_channels(r, "abs-sum"), [[4.5, 3.0]])
    np.testing.assert_allclose(viz.reduce_channels(r, "max-norm"), [[3.0, 2.0]])
    hwc = np.moveaxis(np.random.default_rng(1).normal(size=(3, 6, 5)), 0, -1)
    np.testing.assert_allclose(viz.reduce_channels(hwc), hwc.sum(-1))  # channels last, found by size
    np.testing.assert_allclose(viz.reduce_channels(torch.tensor(r)[None]), [[-1.5, -1.0]])  # batch of one
    with pytest.raises(ValueError, match="channel_axis"):
        viz.reduce_channels(np.zeros((8, 9, 10)))
    np.testing.assert_allclose(viz.reduce_channels(np.ones((8, 9, 10)), channel_axis=0), np.full((9, 10), 8.0))
    with pytest.raises(ValueError, match="abs-sum"):
        viz.reduce_channels(r, "mean")
    # an unsigned reduction only uses the upper half of the scale: no pixel is bluer than the centre
    h = viz.heatmap(r, reduce="abs-sum", cmap="bwr")
    assert (h[..., 0] == 1.0).all() and (h[..., 2] <= 1.0).all()


# ------------------------------------------------------------------------------------------------ overlays, grids


def test_overlay_blends_hand_values():
    image = np.zeros((3, 2, 2))
    image[0] = 1.0  # a pure red image in [0, 1]: luminance 0.299
    rel = np.array([[0.0, 2.0], [-2.0, 1.0]])
    out = viz.overlay(rel, image, alpha=0.25, cmap="bwr")
    gray = 0.299
    np.testing.assert_allclose(out[0, 0], 0.75 * gray + 0.25 * np.array(WHITE))
    np.testing.assert_allclose(out[0, 1], 0.75 * gray + 0.25 * np.array(RED))
    np.testing.assert_allclose(out[1, 0], 0.75 * gray + 0.25 * np.array(BLUE))
    colour = viz.overlay(rel, image, alpha=0.25, cmap="bwr", grayscale=False)
    np.testing.assert_allclose(colour[0, 0], 0.75 * np.array(RED) + 0.25 * np.array(WHITE))
    # by magnitude: no relevance shows the image unchanged, full relevance gets the full alpha
    mag = viz.overlay(rel, image, alpha=0.5, cmap="bwr", by_magnitude=True)
    np.testing.assert_allclose(mag[0, 0], (gray,) * 3)
    np.testing.assert_allclose(mag[1, 1], 0.75 * gray + 0.25 * np.array(viz.heatmap(rel, cmap="bwr")[1, 1]))
    np.testing.assert_allclose(mag[0, 1], 0.5 * gray + 0.5 * np.array(RED))
    with pytest.raises(ValueError, match="resize"):
        viz.overlay(rel, np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(rel, image, alpha=1.5)


def test_image_rgb_scaling():
    u8 = np.full((2, 2, 3), 51, dtype=np.uint8)
    np.testing.assert_allclose(viz.image_rgb(u8), 0.2)
    normalised = torch.tensor([[[-2.0, 0.0], [1.0, 2.0]]])  # (1, H, W), outside [0, 1]: min-max scaled, gray
    np.testing.assert_allclose(viz.image_rgb(normalised)[..., 1], [[0.0, 0.5], [0.75, 1.0]])


def test_grid_size_placement_and_fill():
    tiles = [np.full((4, 3, 3), k / 10) for k in range(5)]
    g = viz.grid(tiles, ncols=2, pad=1, fill=0.9)
    assert g.shape == (3 * 4 + 2 * 1, 2 * 3 + 1 * 1, 3)
    np.testing.assert_allclose(g[0:4, 0:3], 0.0)
    np.testing.assert_allclose(g[0:4, 4:7], 0.1)
    np.testing.assert_allclose(g[5:9, 4:7], 0.3)
    np.testing.assert_allclose(g[10:14, 0:3], 0.4)
    np.testing.assert_allclose(g[10:14, 4:7], 0.9)  # the empty cell
    np.testing.assert_allclose(g[4, :], 0.9)  # a padding row
    assert viz.grid(tiles).shape == (2 * 4 + 2, 3 * 3 + 2 * 2, 3)  # default: ceil(sqrt(5)) = 3 columns
    with pytest.raises(ValueError, match="one shape"):
        viz.grid([np.zeros((4, 3, 3)), np.zeros((3, 3, 3))])


def test_heatmap_grid_shared_scale():
    small, big = np.array([[1.0, 0.0]]), np.array([[4.0, 0.0]])
    own = viz.heatmap_grid([small, big], ncols=2, pad=0, cmap="bwr")
    shared = viz.heatmap_grid([small, big], ncols=2, pad=0, cmap="bwr", shared_scale=True)
    np.testing.assert_allclose(own[0, 0], RED)  # own scale: each maximum is saturated
    np.testing.assert_allclose(shared[0, 0], (1.0, 0.75, 0.75))  # shared: 1 / 4 of the way to red
    np.testing.assert_allclose(shared[0, 2], RED)
    images = [np.zeros((1, 1, 2)), np.ones((1, 1, 2))]
    over = viz.heatmap_grid([small, big], images=images, ncols=1, pad=0, alpha=1.0, cmap="bwr")
    np.testing.assert_allclose(over, np.concatenate([own[:, :2], own[:, 2:]], axis=0))


# ------------------------------------------------------------------------------------------------ PNG


@pytest.mark.parametrize("channels", [3, 4])
def test_png_round_trip(tmp_path, channels):
    a = np.random.default_rng(2).random((7, 5, channels))
    data = viz.png_bytes(a)
    expect = np.round(a * 255).astype(np.uint8)
    np.testing.assert_array_equal(_decode_png(data), expect)
    path = viz.save_png(a, tmp_path / "sub" / "a.png")
    np.testing.assert_array_equal(_decode_png(path.read_bytes()), expect)
    uri = viz.png_data_uri(a)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == data
    with pytest.raises(ValueError, match="RGB"):
        viz.png_bytes(np.zeros((4, 4)))


# ------------------------------------------------------------------------------------------------ figures


def test_plot_heatmaps_draws_the_heatmap_titles_and_symmetric_colorbar(tmp_path):
    rng = np.random.default_rng(3)
    rel = rng.normal(size=(3, 3, 6, 6))
    rel[1] *= 5
    fig = viz.plot_heatmaps(rel, titles=["a", "b<", "c"], ncols=2, cmap="bwr", dpi=50, panel_size=2.0,
                            path=tmp_path / "grid.png")
    heat_axes = [ax for ax in fig.axes if ax.images]
    assert len(heat_axes) == 3 and [ax.get_title() for ax in heat_axes] == ["a", "b<", "c"]
    for k, ax in enumerate(heat_axes):
        im = ax.images[0]
        np.testing.assert_allclose(im.get_array(), viz.heatmap(rel[k], cmap="bwr"))
        m = np.abs(rel[k].sum(0)).max()
        assert (im.norm.vmin, im.norm.vmax) == pytest.approx((-m, m))
    assert len(fig.axes) == 4 + 3  # 2 x 2 panels (one empty) and 3 colour bars
    pixels = viz.figure_to_array(fig)
    w, h = fig.get_size_inches() * 50
    assert pixels.shape == (round(h), round(w), 4)
    saved = _decode_png((tmp_path / "grid.png").read_bytes())
    assert saved.shape[:2] == pixels.shape[:2]
    # the rendered figure really contains strongly red and strongly blue pixels
    rgb = pixels[..., :3].astype(int)
    assert ((rgb[..., 0] > 200) & (rgb[..., 2] < 60)).sum() > 20
    assert ((rgb[..., 2] > 200) & (rgb[..., 0] < 60)).sum() > 20
    shared = viz.plot_heatmaps(rel, shared_scale=True, colorbar=False, cmap="bwr", dpi=50)
    m = np.abs(rel.sum(1)).max()
    assert all(ax.images[0].norm.vmax == pytest.approx(m) for ax in shared.axes if ax.images)


def test_plot_heatmaps_with_images_beside_and_overlaid():
    rel, img = np.random.default_rng(4).normal(size=(2, 1, 4, 4)), np.random.default_rng(5).random((2, 3, 4, 4))
    beside = viz.plot_heatmaps(rel, images=img, colorbar=False, dpi=40)
    shown = [ax.images[0].get_array() for ax in beside.axes if ax.images]
    assert len(shown) == 4  # image, heatmap per row
    np.testing.assert_allclose(shown[0], viz.image_rgb(img[0]))
    np.testing.assert_allclose(shown[3], viz.heatmap(rel[1]))
    over = viz.plot_heatmaps(rel, images=img, overlay_alpha=0.3, colorbar=False, dpi=40)
    drawn = [ax.images[0].get_array() for ax in over.axes if ax.images]
    assert len(drawn) == 2
    np.testing.assert_allclose(drawn[1], viz.overlay(rel[1], img[1], alpha=0.3))
    with pytest.raises(ValueError, match="2 relevance maps but 1 images"):
        viz.plot_heatmaps(rel, images=img[:1])


def test_legacy_visualize_module(tmp_path):
    from dynamiclrp import visualize

    x, r = torch.rand(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    path = visualize.save_heatmaps(list(x), list(r), tmp_path / "out" / "demo.png", titles=["p", "q"])
    png = _decode_png(path.read_bytes())
    assert png.ndim == 3 and png.shape[0] > 100
    im = visualize.heatmap(r[0], cmap="bwr")
    m = r[0].abs().max().item()
    assert (im.norm.vmin, im.norm.vmax) == pytest.approx((-m, m))
    np.testing.assert_allclose(im.get_array(), viz.heatmap(r[0], cmap="bwr"))
    with pytest.raises(ValueError, match="same length"):
        visualize.save_heatmaps(list(x), list(r[:1]), tmp_path / "x.png")


def test_plot_curves_lines_auc_and_colours(tmp_path):
    x = np.linspace(0, 1, 5)
    curves = {"MoRF": {"lrp": (x, 1 - x), "random": (x, 1 - x ** 2)},
              "LeRF": {"random": (x, 1 - x ** 2), "lrp": (torch.tensor(x), torch.ones(5))}}
    fig = viz.plot_curves(curves, title="VGG", path=tmp_path / "c.png")
    morf, lerf = fig.axes
    assert (morf.get_title(), lerf.get_title()) == ("MoRF", "LeRF")
    assert morf.get_xlim() == (0.0, 1.0)
    np.testing.assert_allclose(morf.lines[0].get_xydata(), np.stack([x, 1 - x], 1))
    labels = [t.get_text() for t in morf.get_legend().get_texts()]
    # trapezoid AUC of 1 - x is 0.5; of 1 - x^2 on 5 points: 1 - (0 + 2 (1/16 + 1/4 + 9/16) + 1) / 8 = 0.65625
    assert labels == ["lrp (AUC 0.500)", "random (AUC 0.656)"]
    assert [t.get_text() for t in lerf.get_legend().get_texts()] == ["random (AUC 0.656)", "lrp (AUC 1.000)"]
    colour = {ln.get_label().split()[0]: ln.get_color() for ln in morf.lines}
    assert all(colour[ln.get_label().split()[0]] == ln.get_color() for ln in lerf.lines)
    assert viz.curve_auc([0, 0.5, 1], [1, 0, 1]) == pytest.approx(0.5)
    single = viz.plot_curves({"lrp": (x, 1 - x)})
    assert len(single.axes) == 1 and single.axes[0].get_title() == ""
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        viz.plot_curves({"lrp": (np.arange(5), np.zeros(5))})
    with pytest.raises(ValueError, match="same length"):
        viz.plot_curves({"lrp": (x, np.zeros(3))})
    with pytest.raises(ValueError, match="pair"):
        viz.plot_curves({"lrp": np.zeros(5)})


# ------------------------------------------------------------------------------------------------ tokens

_SPAN = re.compile(r'<span style="background-color: (#[0-9a-f]{6}); color: (#[0-9a-f]{6});[^"]*" '
                   r'title="([^"]*)">(.*?)</span>')


def _spans(fragment: str) -> list:
    return _SPAN.findall(fragment)


def test_tokens_html_spans_colours_tooltips_and_escaping():
    tokens = ["The", " <b>cat</b>", " &", ' "sat"', "\n", "x"]
    rel = np.array([0.5, -2.0, 0.0, 1.0, 2.0, -0.25])
    frag = viz.tokens_html(tokens, rel, clean=False, fmt="+.6g")
    spans = _spans(frag)
    assert len(spans) == len(tokens)
    expect = [viz.colormaps.to_hex(c) for c in viz.colorize(rel, "bwr")]
    assert [s[0] for s in spans] == expect
    assert spans[2][0] == "#ffffff" and spans[1][0] == "#0000ff" and spans[4][0] == "#ff0000"
    assert spans[0][0] == "#ffbfbf"  # 0.5 / 2 of the way from white to red
    values = [float(re.match(r"R = (\S+)", html.unescape(s[2])).group(1)) for s in spans]
    np.testing.assert_allclose(values, rel)
    assert [html.unescape(s[3]) for s in spans] == ["The", "<b>cat</b>", "&", '"sat"', "\u21b5", "x"]
    assert "<b>" not in frag and "&lt;b&gt;cat&lt;/b&gt;" in frag
    assert spans[1][1] == "#ffffff" and spans[2][1] == "#000000"  # white text on strong blue, black on white
    assert "\u21b5</span><br>" in frag  # a newline token breaks the line
    assert frag.count("&nbsp;<span") == 3  # word-initial spaces are drawn between the spans
    for banned in ("<script", "<link", "<style", "http://", "https://", "\\(", "$$"):
        assert banned not in frag
    assert "-2" in frag and "+2" in frag  # the legend's scale


def test_tokens_html_scale_options_and_errors(tmp_path):
    rel = np.array([1.0, 10.0])
    vmax = _spans(viz.tokens_html(["a", "b"], rel, vmax=1.0, clean=False))
    assert vmax[0][0] == vmax[1][0] == "#ff0000"
    with pytest.raises(ValueError, match="2 tokens but 3"):
        viz.tokens_html(["a", "b"], [1, 2, 3])
    with pytest.raises(ValueError, match="sum over the hidden"):
        viz.tokens_html(["a", "b"], np.ones((2, 4)))
    page = viz.save_html(tmp_path / "t.html", viz.tokens_html(["Ġhi"], [1.0]), title="a <t>")
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text
    assert "<title>a &lt;t&gt;</title>" in text and ">hi</span>" in text


def test_percentile_scale_on_tokens_is_hand_checkable():
    rel = np.array([1.0, 10.0, -3.0])
    m = np.percentile([1.0, 10.0, 3.0], 50)  # = 3
    spans = _spans(viz.tokens_html(["a", "b", "c"], rel, percentile=50, clean=False))
    assert m == 3.0
    assert spans[0][0] == viz.colormaps.to_hex(viz.get_cmap("bwr")((1 / 3 + 1) / 2))
    assert spans[1][0] == "#ff0000" and spans[2][0] == "#0000ff"


class _FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_ansi_codes_and_plain_fallback(monkeypatch):
    tokens, rel = ["Hi", "Ġthere", "Ċ", "!"], [2.0, -1.0, 0.0, -2.0]
    text = viz.tokens_ansi(tokens, rel, color=True)
    assert text == ("\x1b[48;2;255;0;0m\x1b[38;2;255;255;255mHi\x1b[0m"
                    " \x1b[48;2;128;128;255m\x1b[38;2;0;0;0mthere\x1b[0m"
                    "\x1b[48;2;255;255;255m\x1b[38;2;0;0;0m\u21b5\x1b[0m\n"
                    "\x1b[48;2;0;0;255m\x1b[38;2;255;255;255m!\x1b[0m")
    plain = viz.tokens_ansi(tokens, rel, color=False)
    assert plain == "Hi[+2] there[-1]\u21b5[+0]\n![-2]" and "\x1b" not in plain
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert "\x1b[" not in viz.tokens_ansi(tokens, rel, stream=io.StringIO())  # not a terminal
    tty = _FakeTTY()
    viz.print_tokens(tokens, rel, stream=tty)
    assert tty.getvalue().startswith("\x1b[48;2;255;0;0m") and tty.getvalue().endswith("\n")
    monkeypatch.setenv("NO_COLOR", "1")
    assert not viz.use_color(_FakeTTY())
    assert viz.tokens_ansi(tokens, rel, stream=_FakeTTY()) == plain
    monkeypatch.setenv("NO_COLOR", "")  # an empty NO_COLOR does not disable colour (no-color.org)
    assert viz.use_color(_FakeTTY())


@pytest.mark.parametrize("raw,expect", [
    (["[CLS]", "un", "##believ", "##able", "!", "[SEP]"], ["[CLS]", " un", "believ", "able", " !", " [SEP]"]),
    (["Hello", "\u0120world", "\u010a", "\u0120caf\u00c3\u00a9", "<|endoftext|>"],
     ["Hello", " world", "\n", " caf\u00e9", "<|endoftext|>"]),
    (["<s>", "\u2581Hello", "\u2581world", "<0x0A>", "!", "<0xE2>"], ["<s>", " Hello", " world", "\n", "!", "<0xE2>"]),
    (["\u2581Only"], ["Only"]),
    (["plain", "words"], ["plain", "words"]),
    (["##"], ["##"]),
])
def test_clean_tokens(raw, expect):
    assert viz.clean_tokens(raw) == expect


def test_clean_tokens_schemes_ids_and_tokenizers(tmp_path):
    assert viz.clean_tokens(["\u2581a", "b"], scheme="sentencepiece", strip_first=False) == [" a", "b"]
    assert viz.clean_tokens(["a", "##b"], scheme="plain") == ["a", "##b"]
    assert viz.clean_tokens(["\u00c3\u00a9t\u00c3\u00a9"], scheme="bytelevel") == ["\u00e9t\u00e9"]

    class Fake:
        vocab = ["[CLS]", "play", "##ing"]

        def convert_ids_to_tokens(self, ids):
            return [self.vocab[i] for i in ids]

    assert viz.clean_tokens(torch.tensor([0, 1, 2]), tokenizer=Fake()) == ["[CLS]", " play", "ing"]
    with pytest.raises(TypeError, match="tokenizer="):
        viz.clean_tokens([0, 1])
    with pytest.raises(ValueError, match="unknown token scheme"):
        viz.clean_tokens(["a"], scheme="bpe")
    from transformers import BertTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "un", "##believ", "##able", "<"]))
    tok = BertTokenizer(str(vocab))
    ids = tok("the unbelievable <")["input_ids"]
    assert viz.clean_tokens(ids, tokenizer=tok) == ["[CLS]", " the", " un", "believ", "able", " <", " [SEP]"]
    frag = viz.tokens_html(tok.convert_ids_to_tokens(ids), np.arange(len(ids)) - 3.0)
    assert [html.unescape(s[3]) for s in _spans(frag)] == ["[CLS]", "the", "un", "believ", "able", "<", "[SEP]"]


# ------------------------------------------------------------------------------------------------ notebook


def test_explanation_repr_html_image_is_the_heatmap():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    expl = LRP(model).explain(torch.randn(2, 3, 8, 8), target=[1, 3])
    page = expl._repr_html_()
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) == 2
    png = _decode_png(base64.b64decode(uris[1]))
    assert png.shape == (128, 128, 3)  # 8 x 8 enlarged 16 x
    expect = viz.png.to_uint8(viz.heatmap(expl.relevance[0][1]))
    np.testing.assert_array_equal(png[::16, ::16], expect)
    assert "target 1" in page and "target 3" in page
    total = expl.relevance[0][1].sum().item()
    assert f"total input relevance {total:+.5g}" in page
    one = viz.explanation_html(expl, index=-1)
    assert one.count("<img") == 1 and "sample 1:" in one
    with pytest.raises(IndexError):
        viz.explanation_html(expl, index=2)


class _TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(20, 6), nn.Linear(6, 20)

    def forward(self, ids):
        return self.head(torch.tanh(self.emb(ids)).cumsum(1))


def test_explanation_repr_html_tokens_positions_and_given_tokens():
    ids = torch.tensor([[3, 7, 1, 12]])
    expl = LRP(_TinyLM().eval()).explain(ids)
    spans = _spans(expl._repr_html_())
    assert [s[3] for s in spans] == ["[0]", "[1]", "[2]", "[3]"]
    values = [float(re.match(r"R = (\S+)", html.unescape(s[2])).group(1)) for s in spans]
    np.testing.assert_allclose(values, expl.relevance[0][0].numpy(), rtol=1e-3)
    expect = [viz.colormaps.to_hex(c) for c in viz.colorize(expl.relevance[0][0], "bwr")]
    assert [s[0] for s in spans] == expect
    page = viz.explanation_html(expl, tokens=["<s>", "\u2581a", "\u2581<b>", "c"])
    assert [html.unescape(s[3]) for s in _spans(page)] == ["<s>", "a", "<b>", "c"]
    assert "&lt;b&gt;" in page


def test_viz_imports_and_works_without_matplotlib():
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import numpy as np, dynamiclrp, dynamiclrp.viz as v\n"
            "assert v.heatmap(np.eye(2)).shape == (2, 2, 3)\n"
            "assert '<span' in v.tokens_html(['a'], [1.0]) and v.png_bytes(np.zeros((1, 1, 3)))\n"
            "try:\n    v.plot_curves({'a': ([0, 1], [1, 0])})\nexcept ImportError as e:\n    print(e)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install" in out.stdout and "matplotlib" in out.stdout


def test_token_html_document(tmp_path, monkeypatch):
    rows = [("first <row>", ["\u0120a", "\u0120b"], [1.0, -1.0]), ("second", ["x"], [0.0])]
    page = viz.token_html_document(rows, title="demo")
    assert page.startswith("<!DOCTYPE html>") and "<title>demo</title>" in page
    assert "first &lt;row&gt;" in page and "<row>" not in page
    spans = _spans(page)
    assert [(s[0], html.unescape(s[3])) for s in spans] == [("#ff0000", "a"), ("#0000ff", "b"), ("#ffffff", "x")]
    with pytest.raises(ValueError, match=r"\(label, tokens, relevance\)"):
        viz.token_html_document([("only label",)])
    x, r = torch.rand(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    path = viz.save_heatmaps(list(x), list(r), tmp_path / "g.png", titles=["a", "b"], overlay_alpha=0.5)
    assert _decode_png(path.read_bytes()).shape[2] == 4
