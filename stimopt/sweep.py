"""After a sweep (-m): one table (job overrides x best response x evaluations to reach it) and one
plot of best-so-far curves in the sweep directory, so "which one wins" needs no notebook."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from hydra.experimental.callback import Callback


def collect(sweep_dir: Path) -> list[dict]:
    rows = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        if not overrides_file.exists():
            continue
        import yaml

        overrides = " ".join(yaml.safe_load(overrides_file.read_text()) or [])
        row = {"job": job.name, "overrides": overrides, "best_response": None, "n_evaluations": None,
               "evaluations_to_best": None, "wall_s": None, "status": "missing"}
        if (job / "summary.json").exists():
            s = json.loads((job / "summary.json").read_text())
            row.update({k: s.get(k) for k in ("best_response", "n_evaluations", "evaluations_to_best", "wall_s", "status")})
        elif (job / "error.txt").exists():
            row["status"] = "error: " + (job / "error.txt").read_text().strip()
        rows.append(row)
    # show only what differs between jobs; what all share goes in the table's caption
    common = set.intersection(*(set(r["overrides"].split()) for r in rows)) if rows else set()
    for r in rows:
        r["overrides"] = " ".join(o for o in r["overrides"].split() if o not in common)
    return rows, sorted(common)


def write_table(rows: list[dict], common: list[str], sweep_dir: Path) -> str:
    with open(sweep_dir / "sweep_summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"sweep {sweep_dir.name}; common overrides: {' '.join(common) or '(none)'}", "", "| job | overrides | best response | evaluations | to best | status |", "|---|---|---|---|---|---|"]
    for r in rows:
        best = "" if r["best_response"] is None else f"{r['best_response']:.4g}"
        lines.append(f"| {r['job']} | {r['overrides']} | {best} | {r['n_evaluations'] or ''} | {r['evaluations_to_best'] or ''} | {r['status']} |")
    text = "\n".join(lines) + "\n"
    (sweep_dir / "sweep_summary.md").write_text(text)
    return text


def plot(rows: list[dict], sweep_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stimopt.report import best_so_far
    from stimopt.store import RunStore

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        db = sweep_dir / r["job"] / "evaluations.sqlite"
        if not db.exists():
            continue
        store = RunStore(db)
        resp, scores = store.responses(), store.scores()
        store.close()
        if not resp.size:
            continue
        acc = best_so_far(resp, scores)  # by the stored score: the run's objective applied the direction
        ax.plot(np.arange(1, resp.size + 1), acc, label=r["overrides"] or r["job"])
    ax.set_xlabel("evaluations")
    ax.set_ylabel("best response so far")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(sweep_dir / "sweep.png", dpi=80)
    plt.close(fig)


class SweepReport(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows, common = collect(sweep_dir)
        if not rows:
            return
        print(write_table(rows, common, sweep_dir))
        plot(rows, sweep_dir)
        print(f"sweep table and plot: {sweep_dir}/sweep_summary.md, {sweep_dir}/sweep.png")
        from stimopt.html_sweep import write_page_safely

        write_page_safely(sweep_dir)  # sweep.html (stimopt.html_sweep)
