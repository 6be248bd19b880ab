"""The run directory's report: summary.json, best.png (top stimuli) and trajectory.png."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from stimopt.rundir import write_atomic

N_BEST = 8


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def best_so_far(responses: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """[N]: the response of the best-scoring of the first i + 1 evaluations (NaN while none has a
    score). Reads the stored scores, so the direction is the objective's, never re-derived here."""
    s = np.where(np.isnan(scores), -np.inf, np.asarray(scores, dtype=np.float64))
    if not s.size:
        return np.zeros(0)
    earlier = np.concatenate([[-np.inf], np.maximum.accumulate(s)[:-1]])
    return np.asarray(responses, dtype=np.float64)[np.maximum.accumulate(np.where(s > earlier, np.arange(s.size), 0))]


def _save_figure(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, dpi=80, format="png")
    write_atomic(path, buf.getvalue())


def best_images(run, k: int = N_BEST) -> tuple[np.ndarray, list[float]]:
    """Regenerate the k best stimuli from their stored codes: (images [k,H,W,3], responses)."""
    top = run.store.top(k)
    if not top:
        return np.zeros((0, 1, 1, 3)), []
    codes = np.array([t["code"] for t in top])
    with torch.inference_mode():
        images = run.generator.generate(codes)
    images = images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return images.transpose(0, 2, 3, 1).clip(0, 1), [t["response"] for t in top]


def save_best(run, path: Path, k: int = N_BEST) -> None:
    images, responses = best_images(run, k)
    if not len(images):
        return
    plt = _figure()
    fig, axes = plt.subplots(1, len(images), figsize=(2 * len(images), 2.3), squeeze=False)
    for ax, img, r in zip(axes[0], images, responses):
        ax.imshow(img)
        ax.set_title(f"{r:.3g}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"best stimuli (direction={run.objective.direction})", fontsize=10)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def save_trajectory(run, path: Path) -> None:
    gens = run.store.generations()
    if not gens:
        return
    plt = _figure()
    n = np.array([g["n_evaluations"] for g in gens])
    best = np.array([np.nan if g["best_response"] is None else g["best_response"] for g in gens])
    mean = np.array([np.nan if g["mean_response"] is None else g["mean_response"] for g in gens])
    so_far = best_so_far(run.store.responses(), run.store.scores())[n - 1]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(n, so_far, label="best so far")
    ax.plot(n, best, alpha=0.5, label="generation best")
    ax.plot(n, mean, alpha=0.5, label="generation mean")
    refs = run.store.shown("reference")
    if refs:  # the drift / health signal: mean response to the reference images at each showing
        at = {g["generation"]: g["n_evaluations"] for g in gens}
        shown = sorted({r["generation"] for r in refs})
        seen = [[r["response"] for r in refs if r["generation"] == g and np.isfinite(r["response"])] for g in shown]
        means = [np.mean(v) if v else np.nan for v in seen]
        ax.plot([at[g] for g in shown], means, "k.--", alpha=0.7, label="reference images (mean)")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("response")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def write(run, summary: dict) -> None:
    d = Path(run.run_dir)
    write_atomic(d / "summary.json", json.dumps(summary, indent=2) + "\n")  # never a 0-byte summary (stimopt.rundir)
    save_trajectory(run, d / "trajectory.png")
    save_best(run, d / "best.png")
    from stimopt.html_report import write_page_safely

    write_page_safely(d, summary, run.generator)  # report.html (stimopt.html_report)
