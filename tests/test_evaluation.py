"""The faithfulness evaluation (dynamiclrp.evaluation, `dynamiclrp eval`, benchmarks/faithfulness.py): quick mode end
to end, rule selection on the held-out split only, sharded == single process, the ground-truth tasks' targets."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynamiclrp.evaluation import build, evaluate_split, run_task, select
from dynamiclrp.evaluation.methods import LRPMethod
from dynamiclrp.evaluation.report import markdown_table
from dynamiclrp.metrics import pointing_game, tps

ROOT = Path(__file__).resolve().parents[1]
#: tiny sizes: trained in a second, a few examples
TINY = {"pattern_cnn": {"n": 6, "heldout": 2, "train": 200, "epochs": 1, "batch": 2, "steps": 3, "samples": 2},
        "qa": {"n": 12, "heldout": 4, "train": 200, "epochs": 1, "batch": 4, "samples": 2}}


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    env.pop("WORLD_SIZE", None)
    return env


def _run(args, tmp: Path, torchrun: bool = False) -> dict:
    out = tmp / ("sharded" if torchrun else "single")
    script = str(ROOT / "benchmarks" / "faithfulness.py")
    cmd = [sys.executable, script]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(29500 + os.getpid() % 1000), script]
    proc = subprocess.run(cmd + args + ["--out", str(out)], env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def _strip(results: dict) -> list:
    """Everything but timings."""
    tasks = []
    for t in results["tasks"]:
        methods = {m: {k: v for k, v in row.items() if not k.startswith("seconds")} for m, row in t["methods"].items()}
        tasks.append((t["task"], t["selection"], methods, t["curves"]))
    return tasks


def test_quick_cli_end_to_end(tmp_path):
    """`dynamiclrp eval --quick` on tiny tasks writes JSON, markdown and the curve PNG; every method ran; the
    random baseline is beaten by the dynamiclrp presets on the pattern task and on TPS."""
    from dynamiclrp.__main__ import main

    out = tmp_path / "eval"
    assert main(["eval", "--quick", "--tasks", "pattern_cnn,qa", "--sizes", json.dumps(TINY), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("**ABPC**")
    assert (out / "pattern_cnn_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "qa_curves.png").exists()  # no perturbation curves for QA
    cnn, qa = res["tasks"]
    expected = {"dynamiclrp:selected", "dynamiclrp:epsilon_plus", "dynamiclrp:epsilon_gamma_box",
                "dynamiclrp:epsilon_plus_flat", "dynamiclrp:epsilon_alpha2_beta1", "captum_saliency",
                "captum_input_x_gradient", "captum_integrated_gradients", "captum_gradient_shap", "captum_smoothgrad",
                "zennit_epsilon_gamma_box", "zennit_epsilon_plus_flat", "autolrp", "random"}
    assert expected <= set(cnn["methods"])
    for name, row in cnn["methods"].items():
        assert "error" not in row, (name, row)
        assert row["n"] == 4 and len(row["abpc_per_example"]) == 4
        assert abs(row["abpc"] - (row["comprehensiveness"] - row["sufficiency"])) < 1e-9
    # Zennit's composites through Zennit equal ours (same rules, canonised the same way)
    for comp in ("epsilon_gamma_box", "epsilon_plus_flat"):
        assert cnn["methods"][f"zennit_{comp}"]["abpc"] == pytest.approx(cnn["methods"][f"dynamiclrp:{comp}"]["abpc"],
                                                                         rel=1e-6, abs=1e-9)
    assert {"tps", "tgs", "tps_top2"} <= set(qa["methods"]["dynamiclrp:attnlrp"])
    assert "abpc" not in qa["methods"]["dynamiclrp:attnlrp"]
    table = markdown_table(res["tasks"])
    assert "| captum_integrated_gradients |" in table and "pattern_cnn (n=4)" in table


def test_selection_uses_only_the_heldout_split():
    """Changing every test example changes nothing in the choice; every call of a candidate saw held-out
    examples only."""
    task = build("pattern_cnn", "quick", **TINY["pattern_cnn"])
    seen = []
    original = LRPMethod.__call__

    def spy(self, inputs, target):
        seen.append(inputs.clone())
        return original(self, inputs, target)

    LRPMethod.__call__ = spy
    try:
        choice = select(task)
    finally:
        LRPMethod.__call__ = original
    held = task.inputs[:task.heldout]
    assert seen and all(any(torch.equal(x[i], h) for h in held) for x in seen for i in range(len(x)))
    garbage = task.inputs.clone()
    garbage[task.heldout:] = torch.randn_like(garbage[task.heldout:]) * 5
    other = dataclasses.replace(task, inputs=garbage, targets=task.targets.flip(0).clone().index_copy_(
        0, torch.arange(task.heldout), task.targets[:task.heldout]))
    assert select(other) == choice
    assert choice["n"] == task.heldout and set(choice["scores"]) == set(task.candidates)
    assert choice["scores"][choice["selected"]] == max(choice["scores"].values())


def test_sharded_equals_single_process(tmp_path):
    """`torchrun --nproc_per_node 2` (gloo, CPU) merges to exactly the single-process result: selection,
    per-example ABPC, pointing game, TPS/TGS and the curves."""
    args = ["--quick", "--tasks", "pattern_cnn,qa", "--sizes", json.dumps(TINY)]
    single = _run(args, tmp_path)
    sharded = _run(args, tmp_path, torchrun=True)
    assert single["meta"]["world_size"] == 1 and sharded["meta"]["world_size"] == 2
    assert _strip(sharded) == _strip(single)


@pytest.mark.slow
def test_pattern_cnn_reaches_its_targets():
    """The ground-truth image task with the CNN: accuracy >= 90 % and pointing game >= 90 % for the presets."""
    task = build("pattern_cnn", "full", n=48, heldout=8, train=2000, epochs=5)
    assert task.info["accuracy"] >= 0.9
    rel = LRPMethod(task, task.presets["epsilon_gamma_box"])(task.inputs, task.targets)
    assert float(pointing_game(rel, task.extras["masks"]).value) >= 0.9
    res = evaluate_split(task, {"lrp": LRPMethod(task, task.presets["epsilon_plus"])}, 0, 16)
    assert res["lrp"].n == 16 and float(res["lrp"].metric("pointing_game").double().mean()) >= 0.9


@pytest.mark.slow
def test_qa_reaches_its_targets():
    """The synthetic extractive QA: exact-match accuracy >= 90 % and TPS >= 95 % under AttnLRP."""
    task = build("qa", "full", n=64, heldout=8, train=2500, epochs=15)
    assert task.info["accuracy"] >= 0.9
    rel = LRPMethod(task, task.presets["attnlrp"])(task.inputs, task.targets)
    assert float(tps(rel, task.targets, task.extras["question"]).value) >= 0.95


@pytest.mark.slow
def test_pattern_vit_run_task():
    """The ViT pattern task end to end (selection among the transformer candidates, pointing game)."""
    task = build("pattern_vit", "full", n=24, heldout=8, train=2000, epochs=8, steps=4, batch=8)
    assert task.info["accuracy"] >= 0.9
    res = run_task(task, peers=False)
    assert res["selection"]["selected"] in task.candidates
    assert res["methods"]["dynamiclrp:selected"]["pointing_game"] >= 0.9
