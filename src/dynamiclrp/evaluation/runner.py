"""The run loop: choose each task's dynamiclrp rule settings on its held-out split, then measure every preset,
baseline and peer on the test split with the same inputs, targets and occlusion -- in one process or sharded over
``torch.distributed`` ranks (launched by ``torchrun``; gloo on CPU, NCCL on GPUs).

Work is split into chunks of ``task.batch`` consecutive examples; chunk ``c`` runs on rank ``c % world_size``, and
everything random is seeded by the chunk (Captum's sampling methods under forked, re-seeded global torch and numpy
generators, the random baseline by its own generator), so the merged result equals a single-process run. Ranks
exchange their chunks' per-example results with ``all_gather_object``; every rank holds the merged result (rank 0
writes the files).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field

import torch

from ..metrics import PerturbationCurves, perturbation_curves, pointing_game, tgs, tps
from .methods import LRPMethod, peer_methods
from .tasks import Task


def init_distributed() -> tuple[int, int]:
    """``(rank, world_size)``: joins the process group ``torchrun`` describes (``WORLD_SIZE`` > 1; gloo on CPU,
    NCCL when CUDA is available), else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(obj) -> list:
    import torch.distributed as dist

    if _world()[1] == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@dataclass
class MethodResult:
    """Per-example results of one method on a split (merged over chunks, in example order)."""

    curves: PerturbationCurves | None = None
    scores: dict = field(default_factory=dict)
    seconds: float = 0.0
    n: int = 0
    error: str | None = None

    def metric(self, name: str) -> torch.Tensor:
        if name in self.scores:
            return self.scores[name]
        return self.curves.metrics()[name].scores

    def summary(self) -> dict:
        if self.error is not None:
            return {"error": self.error}
        row: dict = {"n": self.n, "seconds_per_explanation": self.seconds / max(self.n, 1)}
        if self.curves is not None:
            for name, res in self.curves.metrics().items():
                row[name], row[name + "_se"] = res.value, res.stderr
            row["abpc_per_example"] = self.curves.abpc().scores.tolist()
        for name, s in self.scores.items():
            s = s.double()
            row[name] = float(s.mean())
            row[name + "_se"] = float(s.std() / math.sqrt(s.numel())) if s.numel() > 1 else math.nan
        return row


def _chunks(start: int, stop: int, size: int) -> list[torch.Tensor]:
    return [torch.arange(i, min(i + size, stop)) for i in range(start, stop, size)]


@contextlib.contextmanager
def _numpy_seed(seed: int):
    """Seed numpy's global generator for the block and restore its state afterwards."""
    import numpy as np

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _rows(task: Task, key: str, idx: torch.Tensor):
    return task.extras[key][idx] if key in task.extras else None


def _one(task: Task, method, idx: torch.Tensor, chunk: int) -> dict:
    """Relevance of one method on one chunk, and every metric that applies."""
    inputs, target = task.inputs[idx], task.targets[idx]
    fn = method.for_chunk(chunk) if getattr(method, "chunked", False) else method
    with torch.random.fork_rng(), _numpy_seed(chunk):  # Captum samples from both global generators
        torch.manual_seed(chunk)
        t0 = time.perf_counter()
        rel = fn(inputs, target).detach()
        seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "n": len(idx), "scores": {}, "curves": None}
    if task.perturbation is not None:
        out["curves"] = perturbation_curves(task.score, inputs, rel.double() if rel.dtype != torch.float64 else rel,
                                            task.perturbation, target, feature_mask=_rows(task, "feature_mask", idx))
    if "masks" in task.extras:
        out["scores"]["pointing_game"] = pointing_game(rel, task.extras["masks"][idx]).scores
    if task.family == "qa":
        q = task.extras["question"][idx]
        out["scores"]["tps"] = tps(rel, target, q).scores
        out["scores"]["tgs"] = tgs(rel, task.extras["gold"][idx], q).scores
        out["scores"]["tps_top2"] = tps(rel, target, q, k=2).scores
    return out


def evaluate_split(task: Task, methods: dict, start: int, stop: int, first_chunk: int = 0,
                   progress: bool = False) -> dict[str, MethodResult]:
    """Every method on examples ``start:stop``, sharded over the ranks; the merged result on every rank.

    A method that raises is recorded with its error (and skipped on later chunks) instead of stopping the run."""
    rank, world = _world()
    chunks = _chunks(start, stop, task.batch)
    mine: dict = {}
    errors: dict = {}
    for c, idx in enumerate(chunks):
        if c % world != rank:
            continue
        for name, method in methods.items():
            if name in errors:
                continue
            try:
                mine[(c, name)] = _one(task, method, idx, first_chunk + c)
            except Exception as err:  # a peer library failing on a model is a result, not a crash
                errors[name] = f"{type(err).__name__}: {err}"[:300]
        if progress and rank == 0:
            print(f"  [{task.name}] chunk {c + 1}/{len(chunks)} ({time.strftime('%H:%M:%S')})", flush=True)
    merged: dict = {}
    all_errors: dict = {}
    for part, errs in _all_gather((mine, errors)):
        merged.update(part)
        all_errors.update(errs)
    results = {}
    for name in methods:
        if name in all_errors:
            results[name] = MethodResult(error=all_errors[name])
            continue
        parts = [merged[(c, name)] for c in range(len(chunks))]
        res = MethodResult(seconds=sum(p["seconds"] for p in parts), n=sum(p["n"] for p in parts))
        if parts[0]["curves"] is not None:
            res.curves = PerturbationCurves.cat([p["curves"] for p in parts])
        for key in parts[0]["scores"]:
            res.scores[key] = torch.cat([p["scores"][key] for p in parts])
        results[name] = res
    return results


def select(task: Task, progress: bool = False) -> dict:
    """Choose the dynamiclrp configuration on the held-out split only (examples ``0:task.heldout``): the candidate
    with the highest mean ``task.selection_metric`` (ties: the first listed). Returns ``{"selected", "metric",
    "scores"}``."""
    cands = {name: LRPMethod(task, cfg) for name, cfg in task.candidates.items()}
    res = evaluate_split(task, cands, 0, task.heldout, progress=progress)
    scores = {name: (math.nan if r.error else float(r.metric(task.selection_metric).double().mean()))
              for name, r in res.items()}
    valid = {k: v for k, v in scores.items() if not math.isnan(v)}
    if not valid:
        raise RuntimeError(f"task {task.name}: every dynamiclrp candidate failed on the held-out split: "
                           f"{ {k: r.error for k, r in res.items()} }")
    best = max(valid, key=lambda k: valid[k])
    return {"selected": best, "metric": task.selection_metric, "scores": scores, "n": task.heldout,
            "errors": {k: r.error for k, r in res.items() if r.error}}


def run_task(task: Task, peers: bool = True, progress: bool = False) -> dict:
    """Held-out selection, then the test split (examples ``task.heldout:``) for the presets, the selected
    configuration (``dynamiclrp:selected``), and -- with ``peers`` -- the baselines and peers. JSON-ready dict."""
    t0 = time.perf_counter()
    choice = select(task, progress)
    methods = {f"dynamiclrp:{name}": LRPMethod(task, cfg) for name, cfg in task.presets.items()}
    alias = f"dynamiclrp:{choice['selected']}"
    if alias not in methods:  # a candidate off the preset list: measured as its own row
        methods["dynamiclrp:selected"] = LRPMethod(task, task.candidates[choice["selected"]])
    if peers:
        methods.update(peer_methods(task))
    first = len(_chunks(0, task.heldout, task.batch))
    res = evaluate_split(task, methods, task.heldout, task.n, first_chunk=first, progress=progress)
    if alias in res:  # the chosen preset's own row, computed once
        res = {**res, "dynamiclrp:selected": res[alias]}
    curves = {name: {order: {"x": xy[0].tolist(), "y": xy[1].tolist()} for order, xy in r.curves.plot_data().items()}
              for name, r in res.items() if r.curves is not None}
    return {"task": task.name, "family": task.family, "n_heldout": task.heldout, "n_test": task.n - task.heldout,
            "selection": choice, "methods": {name: r.summary() for name, r in res.items()}, "curves": curves,
            "info": task.info, "seconds": time.perf_counter() - t0}
