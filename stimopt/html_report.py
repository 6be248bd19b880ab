"""``report.html``: one self-contained page per run directory, for people who judge stimuli by
looking at them.

Written at the end of every run (stimopt.report.write hands over the live generator) and again on
resume; ``stimopt-report RUN_DIR`` rebuilds it for a finished or killed run (the generator is then
rebuilt from the stored config). The best and worst stimuli are PNG files in ``report_files/``
beside the page, so the page opens from disk with no server and no network.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from stimopt import html_images, run_reader
from stimopt.errors import StimoptError
from stimopt.html_templates import environment

PAGE = "report.html"
FILES = "report_files"
N_STIMULI = 12
N_STRIP = 16  # bank images shown per list in the optimizer's report (walk's tuning path, ...)

SUMMARY_ROWS = [  # (label, keys of summary.json shown in that row)
    ("status", ["status"]), ("target", ["target_name", "target"]), ("generator", ["generator_name", "generator"]),
    ("optimizer", ["optimizer_name", "optimizer"]), ("direction", ["direction"]), ("budget", ["budget"]),
    ("seed", ["seed"]), ("best response", ["best_response"]), ("evaluations", ["n_evaluations"]),
    ("evaluations to best", ["evaluations_to_best"]), ("missing trials", ["n_missing"]),
    ("generations", ["generations"]), ("wall time (s)", ["wall_s"]), ("loop (s)", ["loop_s"]),
    ("generate (s)", ["generate_s"]), ("evaluate (s)", ["evaluate_s"]), ("overhead fraction", ["overhead_fraction"]),
]

BODY = r"""{% extends "base.html" %}{% import "macros.html" as m %}
{% block title %}stimopt run {{ name }}{% endblock %}
{% block body %}
<h1>stimopt run <code>{{ name }}</code></h1>
<p class="sub">{{ s.get("target_name", "?") }} &times; {{ s.get("generator_name", "?") }} &times;
{{ s.get("optimizer_name", "?") }}, direction={{ s.get("direction", "?") }}
{% if not complete %}<span class="warn">&mdash; {{ note }}</span>{% endif %}</p>

<h2>Summary</h2>
<table id="summary">
{% for label, keys in rows if keys[0] in s %}<tr><th>{{ label }}</th>
<td class="{{ 'num' if s[keys[0]] is number else '' }}">{% for key in keys if key in s %}<span data-key="{{ key }}"
{%- if not loop.first %} class="muted"{% endif %}>{{ m.value(s[key]) }}</span>{% if not loop.last %} &mdash; {% endif %}{% endfor %}</td></tr>
{% endfor %}</table>
{% if split %}<p>Where the wall time went:</p>
<div class="bar" id="time-split">{% for part in split %}<span title="{{ part.label }}: {{ part.s | num }} s"
 style="width: {{ part.pct }}%; background: {{ part.color }}"></span>{% endfor %}</div>
<p class="legend">{% for part in split %}<span style="background: {{ part.color }}"></span>{{ part.label }}
{{ part.s | num }} s ({{ part.pct | round(1) }}%){% endfor %}</p>{% endif %}

<h2>Best stimuli <span class="muted">(highest score; direction={{ s.get("direction", "?") }})</span></h2>
{% if best %}<div id="best">{{ m.stimuli(best, files) }}</div>
{% else %}<p class="muted" id="best">{{ images_note or "no stimulus has a response yet" }}</p>{% endif %}
<h2>Worst stimuli <span class="muted">(lowest score)</span></h2>
{% if worst %}<div id="worst">{{ m.stimuli(worst, files) }}</div>
{% else %}<p class="muted" id="worst">{{ images_note or "no stimulus has a response yet" }}</p>{% endif %}

<h2>Trajectory</h2>
{% if trajectory %}<img id="trajectory" src="{{ trajectory }}" alt="best so far, generation best and mean vs evaluations">
{% else %}<p class="muted">no generation committed yet</p>{% endif %}

<h2>Missing trials</h2>
<p id="missing"><span data-key="n_missing">{{ n_missing }}</span> of {{ n_evaluations }} evaluations have no response.</p>
{% if missing_gens %}<table><tr><th>generation</th><th>stimuli</th><th>missing</th></tr>
{% for g in missing_gens %}<tr><td class="num">{{ g.generation }}</td><td class="num">{{ g.n }}</td>
<td class="num">{{ g.n_missing }}</td></tr>{% endfor %}</table>{% endif %}
<details><summary>all {{ gens | length }} generations</summary>
<table><tr><th>generation</th><th>stimuli</th><th>missing</th><th>best</th><th>mean</th><th>evaluations</th><th>time (s)</th></tr>
{% for g in gens %}<tr><td class="num">{{ g.generation }}</td><td class="num">{{ g.n }}</td><td class="num">{{ g.n_missing }}</td>
<td class="num">{{ g.best_response | num }}</td><td class="num">{{ g.mean_response | num }}</td>
<td class="num">{{ g.n_evaluations }}</td><td class="num">{{ g.wall_s | num }}</td></tr>{% endfor %}</table></details>

<h2>The optimizer's report</h2>
{% if opt_report %}<div id="optimizer-report">{{ m.value(opt_report) }}</div>
{% for strip in strips %}<h3>{{ strip.key }} <span class="muted">(bank images, in order)</span></h3>
{{ m.stimuli(strip.items, files) }}{% endfor %}
<details><summary>as JSON</summary><pre>{{ opt_report_json }}</pre></details>
{% else %}<p class="muted">the optimizer reports nothing</p>{% endif %}

<h2>Composed config</h2>
<pre id="config">{{ config_yaml }}</pre>

<h2>Files</h2>
<ul id="files">{% for f in files_list %}<li><a href="{{ f.name }}">{{ f.name }}</a> <span class="muted">{{ f.size }}</span></li>
{% endfor %}</ul>
{% endblock %}
"""

_env = environment(**{"run.html": BODY})


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def summary_from_store(snap: dict) -> dict:
    """What summary.json would say, for a run killed before it wrote one."""
    from omegaconf import OmegaConf

    from stimopt.experiment import component_name

    cfg = snap["meta"].get("config") or {}
    out = {"status": snap["meta"].get("status", "?"), "direction": snap["direction"]}
    for kind in ("target", "generator", "optimizer"):
        if kind in cfg:
            out[f"{kind}_name"] = component_name(OmegaConf.create(cfg[kind]))
    out.update({k: cfg[k] for k in ("budget", "seed") if k in cfg})
    out.update({
        "best_response": snap["best_response"], "n_evaluations": snap["n_evaluations"],
        "evaluations_to_best": snap["evaluations_to_best"], "n_missing": snap["n_missing"],
        "generations": len(snap["generations"]), "loop_s": round(snap["loop_s"], 3),
    })
    return out


def time_split(s: dict) -> list[dict]:
    wall, loop, gen, ev = (s.get(k) for k in ("wall_s", "loop_s", "generate_s", "evaluate_s"))
    if not wall or loop is None or gen is None or ev is None:
        return []
    parts = [("generate", gen, "#4c72b0"), ("evaluate (target)", ev, "#dd8452"),
             ("optimizer + store", max(loop - gen - ev, 0.0), "#55a868"),
             ("setup + report", max(wall - loop, 0.0), "#c0c0c0")]
    total = sum(p[1] for p in parts) or 1.0
    return [{"label": label, "s": round(sec, 3), "pct": 100.0 * sec / total, "color": c} for label, sec, c in parts]


def save_trajectory(snap: dict, path: Path) -> None:
    """trajectory.png from the store (for runs killed before the end-of-run report drew it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = snap["generations"]
    n = [x["n_evaluations"] for x in g]
    nan = float("nan")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(n, [nan if x["best_so_far"] is None else x["best_so_far"] for x in g], label="best so far")
    ax.plot(n, [nan if x["best_response"] is None else x["best_response"] for x in g], alpha=0.5, label="generation best")
    ax.plot(n, [nan if x["mean_response"] is None else x["mean_response"] for x in g], alpha=0.5, label="generation mean")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("response")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _bank_lists(report, is_bank: bool) -> dict[str, list[int]]:
    """Lists of bank indices in the optimizer's report (walk's tuning path, surrogate's picks)."""
    if not is_bank or not isinstance(report, dict):
        return {}
    out = {}
    for key, v in report.items():
        if isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            out[key] = v[:N_STRIP]
        elif isinstance(v, list) and v and all(isinstance(x, dict) and isinstance(x.get("index"), int) for x in v):
            out[key] = [x["index"] for x in v][:N_STRIP]
    return out


def _render_stimuli(generator, snap: dict, report, folder: Path) -> tuple[dict, list]:
    for old in folder.glob("*.png") if folder.exists() else ():
        old.unlink()
    shown = {}
    for which in ("best", "worst"):
        items = snap[which]
        names = html_images.save_pngs(generator, [x["code"] for x in items], folder, which)
        shown[which] = [{"id": x["id"], "generation": x["generation"], "response": x["response"], "file": f}
                        for x, f in zip(items, names)]
    strips = []
    is_bank = bool(snap["best"]) and np.ndim(snap["best"][0]["code"]) == 0
    for key, indices in _bank_lists(report, is_bank).items():
        names = html_images.save_pngs(generator, indices, folder, f"report_{key}")
        strips.append({"key": key, "items": [{"id": i, "generation": "?", "response": f"#{i}", "file": f}
                                             for i, f in zip(indices, names)]})
    return shown, strips


def write_run_page(run_dir: str | Path, summary: dict | None = None, generator=None) -> Path:
    """(Re)build ``RUN_DIR/report.html`` and its images; returns the page's path.

    ``generator``: the run's live generator; None rebuilds it from the stored config.
    """
    import yaml

    run_dir = Path(run_dir)
    snap = run_reader.snapshot(run_dir, k=N_STIMULI)
    if summary is None and (run_dir / "summary.json").exists():
        summary = json.loads((run_dir / "summary.json").read_text())
    complete = summary is not None and summary.get("n_evaluations") == snap["n_evaluations"]
    note = ""
    if summary is None:
        summary = summary_from_store(snap)
        note = f"no summary.json: the run was stopped before its end (status '{summary['status']}'); numbers from the store"
    elif not complete:
        summary = {**summary, **summary_from_store(snap)}
        note = "summary.json is older than the store (a resumed or running run); numbers from the store"
    report = summary.get("optimizer_report")
    images_note, shown, strips = "", {"best": [], "worst": []}, []
    if snap["best"]:
        try:
            generator = generator or html_images.rebuild_generator(snap["meta"]["config"])
            shown, strips = _render_stimuli(generator, snap, report, run_dir / FILES)
        except Exception as exc:  # a page must never fail because a generator cannot be rebuilt here
            images_note = f"the stimuli could not be rendered here ({type(exc).__name__}: {exc})"
    trajectory = run_dir / "trajectory.png"
    if snap["generations"] and (not trajectory.exists() or not complete):
        save_trajectory(snap, trajectory)
    files = sorted(p for p in run_dir.iterdir() if p.is_file() and p.name != PAGE and not p.name.startswith("evaluations.sqlite-"))
    files += sorted((run_dir / ".hydra").glob("*.yaml")) if (run_dir / ".hydra").is_dir() else []
    html = _env.get_template("run.html").render(
        name=run_dir.name, s=summary, rows=SUMMARY_ROWS, complete=not note, note=note,
        split=time_split(summary), best=shown["best"], worst=shown["worst"], files=FILES,
        images_note=images_note, trajectory="trajectory.png" if trajectory.exists() else None,
        n_missing=snap["n_missing"], n_evaluations=snap["n_evaluations"], gens=snap["generations"],
        missing_gens=[g for g in snap["generations"] if g["n_missing"]],
        opt_report=report, strips=strips, opt_report_json=json.dumps(report, indent=2, default=str),
        config_yaml=yaml.safe_dump(snap["meta"].get("config") or {}, sort_keys=False),
        files_list=[{"name": str(p.relative_to(run_dir)), "size": _size(p.stat().st_size)} for p in files],
    )
    out = run_dir / PAGE
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(html)
    tmp.replace(out)
    return out


def main(argv=None) -> None:
    """``stimopt-report DIR``: (re)build report.html (a run directory) or sweep.html (a sweep directory)."""
    import argparse

    parser = argparse.ArgumentParser(prog="stimopt-report", description=main.__doc__)
    parser.add_argument("directory", type=Path, help="a run directory (evaluations.sqlite) or a sweep directory")
    args = parser.parse_args(argv)
    from stimopt import html_sweep

    try:
        if run_reader.store_path(args.directory).exists():
            page = write_run_page(args.directory)
        elif html_sweep.is_sweep_dir(args.directory):
            page = html_sweep.write_sweep_page(args.directory, rebuild_jobs=True)
        else:
            raise StimoptError(f"{args.directory} is neither a run directory (no evaluations.sqlite) nor a sweep "
                               "directory (no job folders with .hydra/overrides.yaml)")
    except StimoptError as exc:
        print(f"stimopt-report: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(page)


def write_page_safely(run_dir: Path, summary: dict, generator) -> None:
    """The end-of-run hook (stimopt.report.write): a page that cannot be built is one warning line,
    never a lost run (summary.json and the store are already written)."""
    try:
        write_run_page(run_dir, summary, generator)
    except Exception as exc:
        print(f"stimopt: warning: report.html not written ({type(exc).__name__}: {exc}); "
              f"stimopt-report {run_dir} retries", file=sys.stderr)
