"""The benchmark (``dynamiclrp bench``, :mod:`dynamiclrp.bench`): ratio arithmetic with a fake clock, the peak-memory
reader and its reset, and the quick mode end to end (tiny models). No assertion on measured times."""
import json
import os
import statistics
import sys
from pathlib import Path

import pytest
import torch

from dynamiclrp import bench
from dynamiclrp.__main__ import main as cli_main

linux_proc = pytest.mark.skipif(not Path("/proc/self/status").exists() or sys.platform != "linux",
                                reason="peak memory reads Linux's /proc")


# ------------------------------------------------------------------------------------------------ timing arithmetic


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_interleaved_rounds_and_ratio_arithmetic_with_a_fake_clock():
    clock = FakeClock()
    # seconds per timed round; median of ratios (1.5) differs from the ratio of medians (4 / 2 = 2)
    durations = {"grad_x_input": [2.0, 4.0, 1.0], "a": [3.0, 4.0, 5.0], "b": [1.0, 1.0, 1.0]}
    warm = {"grad_x_input": 100.0, "a": 100.0, "b": 100.0}  # untimed: must not reach the times
    calls, gcs = [], []
    left = {k: list(v) for k, v in durations.items()}

    def method(name):
        def call():
            calls.append(name)
            clock.now += warm.pop(name) if name in warm else left[name].pop(0)
        return call

    methods = {k: method(k) for k in durations}
    times = bench.interleaved(methods, rounds=3, warmup=1, clock=clock, before=lambda: gcs.append(1))
    assert times == durations
    # one warm-up round in order, then each round rotated by its index
    assert calls == ["grad_x_input", "a", "b",
                     "grad_x_input", "a", "b", "a", "b", "grad_x_input", "b", "grad_x_input", "a"]
    assert len(gcs) == 9  # before every timed call only
    r = bench.ratios(times)
    assert r["a"]["ratios"] == [1.5, 1.0, 5.0]
    assert r["a"]["ratio"] == 1.5
    assert r["a"]["median_s"] == 4.0
    assert r["b"]["ratios"] == [0.5, 0.25, 1.0] and r["b"]["ratio"] == 0.5
    assert r["grad_x_input"]["ratio"] == 1.0 and r["grad_x_input"]["ratios"] == [1.0, 1.0, 1.0]
    assert bench.ratios(times, reference="b")["a"]["ratio"] == 4.0


# ------------------------------------------------------------------------------------------------ memory


def test_read_status_parses_kib_and_names_a_missing_field(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t  999 kB\nVmHWM:\t    1234 kB\nVmRSS:\t     567 kB\n")
    assert bench.read_status("VmHWM", str(status)) == 1234
    assert bench.read_status("VmRSS", str(status)) == 567
    status.write_text("Name:\tpython\n")
    with pytest.raises(RuntimeError, match="VmHWM.*--no-memory"):
        bench.read_status("VmHWM", str(status))


@linux_proc
def test_real_status_has_a_high_water_mark_above_the_resident_set():
    hwm, rss = bench.read_status("VmHWM"), bench.read_status("VmRSS")
    assert 0 < rss <= hwm


@linux_proc
def test_peak_is_reset_so_an_earlier_larger_peak_does_not_count():
    """``ru_maxrss`` would report the earlier 200 MiB; the reset peak sees only what the measured call touches."""
    def child():
        big = torch.ones(200 * 2**18)  # 200 MiB touched, then freed: the process's lifetime peak
        del big
        small = bench.measure_peak(lambda: torch.ones(2**18).sum())  # 1 MiB
        sized = bench.measure_peak(lambda: torch.ones(64 * 2**18).sum())  # 64 MiB
        return small, sized

    small, sized = bench.in_fork(child)
    assert small["peak_kib"] < 32 * 1024
    assert 60 * 1024 < sized["peak_kib"] < 120 * 1024
    assert sized["hwm_kib"] >= sized["base_kib"] + sized["peak_kib"]


@linux_proc
def test_growth_sees_memory_held_across_calls():
    held = []

    def child():
        held.append(torch.ones(16 * 2**18))  # a first call's one-time allocations are not growth
        return bench.measure_growth(lambda: held.append(torch.ones(16 * 2**18)), 3)  # keeps 16 MiB a call

    mem = bench.in_fork(child)
    assert all(len(v) == 4 for v in mem.values())
    for key in ("rss", "untrimmed", "hwm"):
        steps = [b - a for a, b in zip(mem[key], mem[key][1:])]
        assert all(14 * 1024 < s < 24 * 1024 for s in steps), (key, steps)


def test_in_fork_reports_the_childs_error():
    def child():
        raise ValueError("boom in the child")

    with pytest.raises(RuntimeError, match="boom in the child"):
        bench.in_fork(child)


# ------------------------------------------------------------------------------------------------ config


def test_config_is_validated():
    with pytest.raises(ValueError, match="unknown models.*vgg16"):
        bench.BenchConfig(models=("vgg17",))
    with pytest.raises(ValueError, match="unknown peers"):
        bench.BenchConfig(peers=("shap",))
    with pytest.raises(ValueError, match="batches"):
        bench.BenchConfig(batches=(0,))
    with pytest.raises(ValueError, match="rounds"):
        bench.BenchConfig(rounds=0)
    assert cli_main(["bench", "--models", "vgg17", "--no-memory"]) == 2  # a clear one-line error, not a traceback


def test_tiny_models_give_logits_and_a_nonzero_explained_output():
    for name in bench.MODELS:
        model = bench.build_model(name, quick=True)
        x = bench.make_input(name, model, 2, quick=True)
        with torch.no_grad():
            out = bench.selected(model(x))
        assert out.shape == (2,), name
        assert out.abs().min() > 0, name  # a zero-initialised head would make every explanation trivial
        g = bench.grad_x_input(model, x)
        assert g.shape == x.shape and g.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------------ end to end


def _check_result(result, config):
    assert set(result) >= {"date", "machine", "config", "versions", "rows", "growth", "seconds"}
    assert set(result["machine"]) >= {"cpu", "cores", "memory_gib", "load_avg", "torch", "torch_threads"}
    assert result["machine"]["torch_threads"] == 1
    assert list(result["config"]["models"]) == list(config.models)
    for name in config.models:
        for batch in config.batches:
            rows = {r["method"]: r for r in result["rows"] if r["model"] == name and r["batch"] == batch}
            assert {"forward", "recorded_forward", "grad_x_input", "dynamiclrp_first",
                    "dynamiclrp_repeated"} <= set(rows), (name, batch)
            assert set(config.peers) <= set(rows)
            ref = rows["grad_x_input"]
            for method, row in rows.items():
                if "skipped" in row:
                    assert row["skipped"], method
                    continue
                assert len(row["times"]) == config.rounds and all(t > 0 for t in row["times"])
                if method.startswith("lxt"):
                    continue
                # the ratio is the median of the per-round ratios to gradient x input in the same round
                per_round = [t / tr for t, tr in zip(row["times"], ref["times"])]
                assert row["ratios"] == pytest.approx(per_round)
                assert row["ratio"] == pytest.approx(statistics.median(per_round))
                if config.memory and method in bench.MEMORY_METHODS:
                    assert row["peak_mib"] > 0 and row["hwm_mib"] >= row["peak_mib"]
                    assert row["peak_ratio"] == pytest.approx(row["peak_mib"] / ref["peak_mib"], rel=0.01)
            assert ref["ratio"] == 1.0
            if config.memory:
                assert ref["peak_ratio"] == 1.0
                assert rows["dynamiclrp_repeated"]["peak_mib"] == rows["dynamiclrp_first"]["peak_mib"]
    if config.memory and config.growth:
        assert len(result["growth"]) == len(config.models) * len(config.batches)
        for g in result["growth"]:
            assert all(len(g[k]) == config.growth + 1 for k in ("rss_mib", "untrimmed_mib", "hwm_mib"))
            assert all(h >= r for h, r in zip(g["hwm_mib"], g["untrimmed_mib"]))


def test_quick_mode_end_to_end_through_the_cli(tmp_path, capsys):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    threads = torch.get_num_threads()
    rc = cli_main(["bench", "--quick", "--models", "gpt2", "--batches", "2", "--rounds", "2", "--warmup", "1",
                   "--growth", "2", "--peers", "zennit,captum", "--json", str(out), "--markdown", str(md)])
    assert rc == 0
    assert torch.get_num_threads() == threads  # measured on one thread, the caller's setting given back
    result = json.loads(out.read_text())
    config = bench.BenchConfig(models=("gpt2",), batches=(2,), rounds=2, growth=2, quick=True,
                               peers=("zennit", "captum"))
    _check_result(result, config)
    rows = {r["method"]: r for r in result["rows"]}
    assert "median_s" in rows["dynamiclrp_first"] and "median_s" in rows["dynamiclrp_repeated"]
    assert "Zennit" in rows["zennit"]["skipped"]
    assert "fails: TypeError" in rows["captum"]["skipped"]  # Captum's LRP raises on transformer modules
    text = md.read_text()
    printed = capsys.readouterr().out
    assert text.strip() == printed.strip()
    assert "| model | batch | input | method |" in text and f"{os.cpu_count()} cores" in text
    assert result["date"][:10] in text and result["machine"]["cpu"] in text
    assert len([line for line in text.splitlines() if line.startswith("| gpt2 | 2 | 8 tokens |")]) == 7
    assert len([line for line in text.splitlines() if " → " in line]) == 1  # the growth table


@pytest.mark.slow
def test_quick_mode_all_models_and_peers():
    config = bench.BenchConfig(quick=True, batches=(1,), rounds=1, warmup=1, memory=False, growth=0,
                               peers=("zennit", "captum", "autolrp"))
    result = bench.run(config, log=lambda s: None)
    _check_result(result, config)
    timed = {(r["model"], r["method"]) for r in result["rows"] if "median_s" in r}
    for name in bench.MODELS:
        assert (name, "dynamiclrp_first") in timed
    assert {("vgg16", "zennit"), ("resnet50", "zennit"), ("vgg16", "captum"), ("vgg16", "autolrp")} <= timed
    assert ("vit_b_16", "zennit") not in timed  # not supported: listed with the reason
    json.dumps(result)


@pytest.mark.slow
@pytest.mark.skipif(not bench.DEFAULT_LXT_PYTHON.exists(), reason="no .venv-lxt (scripts/lxt_env.sh)")
def test_lxt_runs_in_its_own_environment_against_its_own_gradient():
    config = bench.BenchConfig(quick=True, models=("gpt2",), batches=(1,), rounds=2, warmup=1, memory=False,
                               growth=0, peers=("lxt",))
    result = bench.run(config, log=lambda s: None)
    rows = {r["method"]: r for r in result["rows"]}
    assert "skipped" not in rows["lxt"], rows["lxt"].get("skipped")
    assert rows["lxt_grad_x_input"]["ratio"] == 1.0
    per_round = [t / tr for t, tr in zip(rows["lxt"]["times"], rows["lxt_grad_x_input"]["times"])]
    assert rows["lxt"]["ratio"] == pytest.approx(statistics.median(per_round))
    assert rows["lxt"]["environment"]["transformers"].startswith("4.")
    assert rows["lxt"]["environment"]["map"] == "lxt.efficient.models.gpt2:attnLRP"
    assert rows["lxt"]["peak_mib"] > 0 and rows["lxt_grad_x_input"]["peak_ratio"] == 1.0
