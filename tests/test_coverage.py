"""Coverage reports (``dynamiclrp.coverage``), the offline model zoo (``dynamiclrp.zoo``) and the ``coverage`` CLI."""
import copy
import json
import textwrap

import pytest
import torch
from torch import nn

from dynamiclrp import CoverageReport, LRPConfig, coverage
from dynamiclrp.__main__ import main
from dynamiclrp.graph import Graph
from dynamiclrp.zoo import build, ensure_torchvision_importable, parse_shape


def _cnn():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 5),
    ).eval()


class _Square(torch.autograd.Function):
    """An op dynamiclrp has no rule for: its node is ``_SquareBackward`` (a non-tensor argument, which autograd
    does not keep, so the Function cannot be re-run)."""

    @staticmethod
    def forward(ctx, x, power):
        ctx.save_for_backward(x)
        return x ** power

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad, None


class _Act(nn.Module):
    def forward(self, x):
        return _Square.apply(x, 2)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.act = _Act()

    def forward(self, x):
        return self.act(self.lin(x)) + x


class _Custom(nn.Module):
    """The custom op twice: inside ``block.act`` and in the model's own forward."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(6)
        self.block = _Block()
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(_Square.apply(self.block(self.norm(x)), 2))


class _Residual(nn.Module):
    def __init__(self, width=8, depth=3):
        super().__init__()
        self.inp = nn.Linear(4, width, bias=False)
        self.layers = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(depth))
        self.out = nn.Linear(width, 3, bias=False)

    def forward(self, x):
        h = self.inp(x)
        for layer in self.layers:
            h = h + torch.relu(layer(h))
        return self.out(h)


def _has_hooks(model):
    return any(m._forward_hooks or m._forward_pre_hooks or m._forward_hooks_with_kwargs for m in model.modules())


# ------------------------------------------------------------------------------------------------ reports


def test_small_cnn_is_fully_covered_with_the_graph_counts():
    model, x = _cnn(), torch.randn(2, 3, 8, 8)
    report = coverage(model, x)
    counts = Graph.capture(model(x.clone().requires_grad_())).op_counts()
    assert {op.name: op.count for op in report.ops} == counts
    assert report.nodes == sum(counts.values()) == report.covered_nodes
    assert report.complete and report.fraction == 1.0 and report.uncovered == {}
    assert report.op_types == report.covered_op_types == len(counts)
    assert report.label == "Sequential"
    assert report.stats is not None and report.engine_error is None
    assert report.stats["promises"] == 0 and report.stats["density"] == 0.0
    text = str(report)
    assert "✓ ConvolutionBackward0" in text and "100.0%" in text and "✗" not in text


def test_custom_function_is_reported_with_its_module_paths():
    torch.manual_seed(0)
    model = _Custom().train()  # batch norm in training mode: the second forward must not move its statistics
    x = torch.randn(4, 6)
    reference = copy.deepcopy(model)
    reference(x)  # what one forward pass does to the buffers
    report = coverage(model, x)
    assert not report.complete and report.fraction < 1.0
    assert report.uncovered == {"_SquareBackward": {"count": 2, "modules": {"": 1, "block.act": 1}}}
    assert report.covered_op_types == report.op_types - 1
    assert report.nodes - report.covered_nodes == 2
    assert report.stats is None and report.engine_error is None
    assert report.ops[0].name == "_SquareBackward" and not report.ops[0].covered  # uncovered ops listed first
    text = str(report)
    assert "✗ _SquareBackward" in text and "block.act x1" in text and "<root> x1" in text
    assert not _has_hooks(model)
    for (name, b), (_, ref) in zip(model.named_buffers(), reference.named_buffers()):
        assert torch.equal(b, ref), name


def test_rule_overrides_count_as_covered():
    from dynamiclrp.rules import IdentityRule

    class SquareRule(IdentityRule):
        def forward(self, node, inputs):
            return (inputs[0] * inputs[0],)

    model, x = _Custom().eval(), torch.randn(4, 6)
    report = coverage(model, x, config=LRPConfig(rule_overrides={"_SquareBackward": SquareRule()}))
    assert report.complete and report.stats is not None and report.engine_error is None
    assert "SquareRule" in {op.rule for op in report.ops}

    # covered, but the residual add needs the custom op's output, which this rule cannot recompute
    report = coverage(model, x, config=LRPConfig(rule_overrides={"_SquareBackward": IdentityRule()}))
    # every op has a rule, yet the explanation fails: not complete (coverage predicts explainability)
    assert report.fraction == 1.0 and not report.complete and report.stats is None
    assert "_SquareBackward" in report.engine_error and "engine run failed" in str(report)


def test_output_only_report_has_no_module_paths():
    model = _Custom().eval()
    out = model(torch.randn(4, 6, requires_grad=True))
    report = coverage(output=out)
    assert report.label == "output"
    assert report.uncovered == {"_SquareBackward": {"count": 2, "modules": {}}}
    with pytest.raises(TypeError):
        coverage()
    with pytest.raises(TypeError):
        coverage(model, torch.randn(4, 6), output=out)


@pytest.mark.parametrize("make", [_cnn, _Custom])
def test_to_dict_and_json_round_trip(make):
    report = coverage(make().eval(), torch.randn(2, 3, 8, 8) if make is _cnn else torch.randn(4, 6))
    data = report.to_dict()
    assert json.loads(report.to_json()) == data
    assert json.loads(json.dumps(data, allow_nan=False)) == data  # strict JSON
    assert CoverageReport.from_dict(json.loads(report.to_json())) == report
    assert data["nodes"] == report.nodes and data["coverage"] == report.fraction
    assert data["uncovered"] == report.uncovered


def test_promise_statistics_on_a_residual_model():
    torch.manual_seed(0)
    model = _Residual().double().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    report = coverage(model, x, config=LRPConfig(epsilon=1e-12), target=1)
    s = report.stats
    assert report.complete and s is not None
    assert s["promises"] > 0 and s["promise_nodes"] > 0
    assert sum(s["promises_by_kind"].values()) == s["promises"]
    assert s["density"] == s["promise_nodes"] / report.nodes
    assert s["max_promise_depth"] >= 0 and s["chain_nodes"] >= 0
    # bias-free, so relevance is conserved from the seed (logit 1 of each sample) down to the input
    seed = model(x)[:, 1].sum().item()
    assert s["seed_relevance"] == pytest.approx(seed, rel=1e-9)
    assert s["input_relevance"] == pytest.approx(seed, rel=1e-6)
    assert s["relevance_ratio"] == pytest.approx(1.0, rel=1e-6)
    assert "density rho" in str(report)
    assert coverage(model, x, run=False).stats is None


def test_output_only_input_relevance_uses_non_parameter_leaves():
    torch.manual_seed(0)
    model = _Residual().double().eval()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    by_model = coverage(model, x, config=LRPConfig(epsilon=1e-12)).stats
    by_output = coverage(output=model(x), config=LRPConfig(epsilon=1e-12)).stats
    assert by_output["input_relevance"] == pytest.approx(by_model["input_relevance"], rel=1e-9)
    assert by_output["promises"] == by_model["promises"]


# ------------------------------------------------------------------------------------------------ zoo


def test_parse_shape():
    assert parse_shape("1,3,32,32") == (1, 3, 32, 32)
    assert parse_shape("1x8") == (1, 8)
    assert parse_shape(None) is None
    with pytest.raises(ValueError):
        parse_shape("1,a")
    with pytest.raises(ValueError):
        parse_shape("0,3")


def test_ensure_torchvision_importable_is_idempotent():
    ensure_torchvision_importable()
    ensure_torchvision_importable()
    import torchvision  # noqa: F401


def test_build_rejects_bad_specs():
    with pytest.raises(ValueError):
        build("resnet18")
    with pytest.raises(ValueError):
        build("hf:not_a_family")
    with pytest.raises(FileNotFoundError):
        build("no/such/file.py:factory")


def test_build_is_seeded_and_leaves_the_callers_random_state_alone():
    """The same spec builds the same weights and inputs (so the README table regenerates identically), and the
    caller's random stream continues as if nothing had been built."""
    state = torch.random.get_rng_state()
    (m1, i1, _), (m2, i2, _) = build("hf:gpt2"), build("hf:gpt2")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(i1[0], i2[0])
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    m3, _, _ = build("hf:gpt2", seed=1)
    assert not torch.equal(m1.lm_head.weight, m3.lm_head.weight)


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama"])
def test_hf_models_from_config_are_fully_covered(name):
    model, inputs, kwargs = build(f"hf:{name}")
    assert inputs[0].shape == (1, 8) and not inputs[0].is_floating_point()
    report = coverage(model, inputs, forward_kwargs=kwargs, label=f"hf:{name}")
    assert report.complete, report.uncovered
    assert report.engine_error is None and report.stats is not None
    assert report.stats["promises"] > 0
    assert report.stats["input_relevance"] != 0  # relevance reached the token embeddings


def test_timm_model_builds_small():
    model, inputs, _ = build("timm:resnet18")
    assert inputs[0].shape == (1, 3, 64, 64)
    assert coverage(model, inputs, run=False).complete


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_torchvision_resnet18(capsys):
    assert main(["coverage", "torchvision:resnet18"]) == 0
    out = capsys.readouterr().out
    assert "dynamiclrp coverage: torchvision:resnet18" in out
    assert "✓ ConvolutionBackward0" in out and "✓ AddBackward0" in out
    assert "100.0%" in out and "promise nodes" in out


_USER_FILE = """
import torch
from torch import nn


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, power):
        return x ** power

    @staticmethod
    def backward(ctx, g):
        raise NotImplementedError


class Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(Square.apply(x, 2))


def factory():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(3, 4)


def bare():
    return nn.Sequential(nn.Linear(4, 2))


def odd():
    return Odd()
"""


def test_cli_user_file(tmp_path, capsys):
    path = tmp_path / "user_model.py"
    path.write_text(textwrap.dedent(_USER_FILE))
    assert main(["coverage", f"{path}:factory"]) == 0
    out = capsys.readouterr().out
    assert f"dynamiclrp coverage: {path}:factory" in out
    assert "✓ AddmmBackward0" in out and "100.0%" in out

    assert main(["coverage", f"{path}:bare", "--input-shape", "5,4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["complete"] and data["stats"]["promises"] == 0

    assert main(["coverage", f"{path}:bare"]) == 2  # a usage error: one line on stderr, no traceback
    err = capsys.readouterr().err
    assert "give the input shape" in err and "Traceback" not in err

    assert main(["coverage", f"{path}:odd", "--input-shape", "1,4"]) == 1  # an op without a rule: status 1
    out = capsys.readouterr().out
    assert "✗ SquareBackward" in out and "NO RULE -- in <root> x1" in out


# ------------------------------------------------------------------------- coverage predicts explainability


class _HiddenConstant(nn.Module):
    """Adds a constant where no recorder can see it, read only by a ReLU (which keeps its result, not the sum)."""

    def forward(self, x):
        with torch._C.DisableTorchFunction():
            return torch.relu(x + torch.full_like(x, 0.5))


class _Unexplainable(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 4)
        self.block = _HiddenConstant()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.block(self.inp(x)))


class _SolvableConstant(nn.Module):
    """The same constant, but a linear layer reads the sum (it saves it): the engine solves ``0.5 = sum - x``."""

    def __init__(self):
        super().__init__()
        self.inp, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        with torch._C.DisableTorchFunction():
            h = self.inp(x) + torch.full_like(x, 0.5)
        return self.head(h)


def _explains(model, x, **kwargs) -> bool:
    from dynamiclrp import LRP
    from dynamiclrp.errors import DynamicLRPError

    try:
        LRP(model).explain(x, conservation_limit=None, **kwargs)
    except (DynamicLRPError, NotImplementedError):
        return False
    return True


@pytest.mark.parametrize("run", [True, False])
def test_unrecoverable_constant_is_reported_as_blocking(run):
    torch.manual_seed(0)
    model, x = _Unexplainable().eval(), torch.randn(2, 4)
    report = coverage(model, x, run=run)
    assert report.fraction == 1.0 and not report.complete  # every op has a rule, and yet: not explainable
    assert report.blocking == [{"op": "AddBackward0", "inputs": [1], "module": "block"}]
    assert (report.engine_error is not None) == run  # the run confirmed the planning
    assert "not explainable: AddBackward0 (in block)" in str(report)
    assert CoverageReport.from_dict(json.loads(report.to_json())).blocking == report.blocking
    assert not _explains(model, x)


def test_dry_run_plans_without_computing_relevance():
    torch.manual_seed(0)
    report = coverage(_Unexplainable().eval(), torch.randn(2, 4), run=False)
    assert report.stats is None and report.engine_error is None
    assert report.blocking == [{"op": "AddBackward0", "inputs": [1], "module": "block"}]


@pytest.mark.parametrize("make", [_cnn, _Residual, _SolvableConstant, _Custom])
def test_complete_agrees_with_explain_on_small_models(make):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, 3, 8, 8) if make is _cnn else torch.randn(4, 4 if make is not _Custom else 6)
    report = coverage(model, x)
    assert report.complete == _explains(model, x)
    assert report.complete == (make is not _Custom)  # _Custom has an op without a rule


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["hf:gpt2", "hf:bert", "hf:mamba", "hf:t5", "torchvision:squeezenet1_0"])
def test_complete_agrees_with_explain_on_zoo_models(spec):
    model, inputs, kwargs = build(spec)
    report = coverage(model, inputs, forward_kwargs=kwargs, label=spec)
    assert report.complete == _explains(model, inputs, **kwargs), (report.blocking, report.engine_error)


@pytest.mark.slow
def test_complete_agrees_with_explain_on_longformer_and_lora_vit():
    """The issue's two "100 % coverage, but explain raises" models: the report now says what explain does."""
    ensure_torchvision_importable()
    import peft
    import timm
    import transformers

    torch.manual_seed(0)
    longformer = transformers.LongformerForSequenceClassification(transformers.LongformerConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
        max_position_embeddings=80, attention_window=4, num_labels=3)).eval()
    ids, mask = torch.randint(1, 100, (1, 8)), torch.ones(1, 8, dtype=torch.long)
    report = coverage(longformer, ids, forward_kwargs={"attention_mask": mask})
    assert report.complete == _explains(longformer, ids, attention_mask=mask)
    if not report.complete:  # the blocking node is named with its module path
        assert report.blocking and report.blocking[0]["module"].startswith("longformer.encoder.layer.")
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3, depth=2)
    lora = peft.get_peft_model(vit, peft.LoraConfig(target_modules=["qkv"], r=4)).eval()
    x = torch.randn(1, 3, 32, 32)
    assert coverage(lora, x).complete == _explains(lora, x)
