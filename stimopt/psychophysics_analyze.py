"""``stimopt-psychophysics analyze FILE...``: accuracy per difficulty bin and condition (Wilson 95%
intervals) over any number of result files, as a table and a figure (the paper's humans: 80.5%)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from stimopt.errors import StimoptError

PAPER_HUMANS = 0.805  # paper 000, Fig. 4b: human accuracy predicting V4 model neurons
Z95 = 1.959964


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def load(paths: list[Path]) -> list[dict]:
    files = []
    for p in paths:
        files += sorted(Path(p).glob("*.json")) if Path(p).is_dir() else [Path(p)]
    results = []
    for f in files:
        try:
            r = json.loads(f.read_text())
            ok = isinstance(r, dict) and isinstance(r.get("trials"), list) and all(
                isinstance(t, dict) and "bin" in t and "correct" in t for t in r["trials"])
        except (OSError, ValueError) as exc:
            raise StimoptError(f"{f} cannot be read as a psychophysics result ({exc})") from None
        if not ok:
            raise StimoptError(f"{f} is not a psychophysics result file (needs 'trials' with 'bin' and 'correct')")
        results.append(r)
    if not results:
        raise StimoptError(f"no result files in {', '.join(map(str, paths))}")
    return results


def accuracy(results: list[dict]) -> dict:
    """{condition: {"all": (k, n, p, lo, hi), bin: (...)}}"""
    counts: dict[str, dict] = {}
    for r in results:
        c = counts.setdefault(str(r.get("condition", "?")), {})
        for t in r["trials"]:
            for key in ("all", int(t["bin"])):
                k, n = c.get(key, (0, 0))
                c[key] = (k + bool(t["correct"]), n + 1)
    return {cond: {key: (k, n, k / n, *wilson(k, n)) for key, (k, n) in sorted(c.items(), key=lambda kv: str(kv[0]))}
            for cond, c in counts.items()}


def figure(acc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for cond, c in acc.items():
        bins = sorted(b for b in c if b != "all")
        p = [c[b][2] for b in bins]
        ax.plot(bins, p, marker="o", label=f"{cond} ({c['all'][2]:.1%})")
        ax.fill_between(bins, [c[b][3] for b in bins], [c[b][4] for b in bins], alpha=0.2)
    ax.axhline(PAPER_HUMANS, color="k", ls="--", lw=1, label=f"paper's humans ({PAPER_HUMANS:.1%})")
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("difficulty bin (1: smallest response difference)")
    ax.set_ylabel("fraction correct")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, title="condition (overall)", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report(paths: list[Path], figure_path: Path) -> str:
    results = load(paths)
    acc = accuracy(results)
    lines = [f"{len(results)} result file(s); accuracy with Wilson 95% intervals (the paper's humans: {PAPER_HUMANS:.1%})",
             "condition  bin  correct/trials  accuracy  95% CI"]
    for cond, c in acc.items():
        for key, (k, n, p, lo, hi) in c.items():
            lines.append(f"{cond:<10} {key!s:>4}  {k:>7}/{n:<6}  {p:8.1%}  [{lo:.1%}, {hi:.1%}]")
    figure(acc, figure_path)
    lines.append(f"figure: {figure_path}")
    return "\n".join(lines)
