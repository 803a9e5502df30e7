"""Outputs of an evaluation: ``results.json`` (everything), ``<task>_curves.png`` (mean MoRF and LeRF curves per
method) and a markdown table (method × task) for the README."""
from __future__ import annotations

import json
import math
from pathlib import Path

LOCALISATION = ("pointing_game", "tps", "tgs")


def _fmt(v, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def _methods(results: list[dict]) -> list[str]:
    names: list[str] = []
    for r in results:
        names += [m for m in r["methods"] if m not in names]
    lrp = [m for m in names if m.startswith("dynamiclrp:")]
    return sorted(lrp, key=lambda m: (m != "dynamiclrp:selected", m)) + [m for m in names if m not in lrp]


def markdown_table(results: list[dict]) -> str:
    """ABPC ± standard error (higher is better; best per task in bold) and, where defined, the pointing game /
    TPS / TGS; then seconds per explanation. ``dynamiclrp:selected`` is the configuration chosen on the held-out
    split (named below the table)."""
    names = _methods(results)
    head = "| method | " + " | ".join(f"{r['task']} (n={r['n_test']})" for r in results) + " |"
    sep = "| --- |" + " ---: |" * len(results)
    lines = ["**ABPC** (AUC LeRF − AUC MoRF of the target logit, ± standard error; higher is better). Pointing game"
             " / TPS / TGS in brackets where defined.", "", head, sep]
    best = {}
    for r in results:
        vals = [row.get("abpc") for row in r["methods"].values() if row.get("abpc") is not None]
        best[r["task"]] = max(vals) if vals else None
        if not vals:
            vals = [row.get(r["selection"]["metric"]) for row in r["methods"].values()
                    if row.get(r["selection"]["metric"]) is not None]
            best[r["task"]] = ("loc", max(vals)) if vals else None
    for name in names:
        cells = []
        for r in results:
            row = r["methods"].get(name)
            if row is None:
                cells.append("")
                continue
            if "error" in row:
                cells.append("failed")
                continue
            parts = []
            if row.get("abpc") is not None:
                text = f"{_fmt(row['abpc'])} ± {_fmt(row['abpc_se'], 2)}"
                parts.append(f"**{text}**" if row["abpc"] == best[r["task"]] else text)
            loc = [f"{k.replace('_game', '')} {100 * row[k]:.0f}%" for k in LOCALISATION if k in row]
            if loc:
                text = ", ".join(loc)
                b = best[r["task"]]
                if isinstance(b, tuple) and row.get(r["selection"]["metric"]) == b[1]:
                    text = f"**{text}**"
                parts.append(f"[{text}]" if parts else text)
            cells.append(" ".join(parts))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "**Seconds per explanation** (CPU, one thread)", "", head, sep]
    for name in names:
        cells = []
        for r in results:
            row = r["methods"].get(name)
            cells.append("" if row is None or "error" in row else _fmt(row["seconds_per_explanation"], 2))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for r in results:
        sel = r["selection"]
        scores = ", ".join(f"{k} {_fmt(v)}" for k, v in sel["scores"].items())
        lines.append(f"* {r['task']}: `dynamiclrp:selected` = **{sel['selected']}**, chosen by mean {sel['metric']} "
                     f"on the {sel['n']} held-out examples ({scores}).")
        for name, row in r["methods"].items():
            if "error" in row:
                lines.append(f"  * {name} failed: {row['error']}")
    return "\n".join(lines) + "\n"


def plot_task(result: dict, path: Path) -> Path | None:
    """Mean MoRF and LeRF curves per method, side by side (:func:`dynamiclrp.viz.plot_curves`)."""
    if not result["curves"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..viz import plot_curves

    panels = {label: {m: (c[order]["x"], c[order]["y"]) for m, c in result["curves"].items()
                      if m != "dynamiclrp:selected"} for label, order in (("MoRF", "morf"), ("LeRF", "lerf"))}
    fig = plot_curves(panels, title=f"{result['task']} (n={result['n_test']})", ylabel="target logit",
                      path=path)
    plt.close(fig)
    return path


def write(results: list[dict], out: Path, meta: dict | None = None) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and one PNG per task with curves under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "results.json", "markdown": out / "results.md"}
    files["json"].write_text(json.dumps({"meta": meta or {}, "tasks": results}, indent=1, default=float),
                             encoding="utf-8")
    files["markdown"].write_text(markdown_table(results), encoding="utf-8")
    for r in results:
        png = plot_task(r, out / f"{r['task']}_curves.png")
        if png is not None:
            files[r["task"]] = png
    return files
