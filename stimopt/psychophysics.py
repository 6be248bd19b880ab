"""``stimopt-psychophysics``: the two-choice experiment of paper 000 (A.1.4, Fig. 4a-c) as a static
web page, and its analysis.

``build SOURCE --out DIR`` turns a finished search (a run directory) or a two-tail screening file
(``.npz`` with ``images`` [N,H,W,3] and ``responses`` [N]) into ``DIR/index.html`` plus its images:
first the prior images (18 preferred + 18 anti-preferred, labelled; the condition decides which are
shown), then 100 trials, each a pair of images; the participant picks the one the neuron responds
to more and sees green/red feedback. Pairs are drawn from the images between the 20th and 80th
response percentiles, 20 in each of 5 bins of response difference (quantiles: bin 1 hardest). The
page stores the choice, reaction time and pair of every trial and saves them as a JSON file the
participant downloads, or posts them to the collection server that ``build --serve --port N``
starts on 127.0.0.1. ``analyze FILE...`` is in stimopt.psychophysics_analyze.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from stimopt.errors import StimoptError

CONDITIONS = ("both", "preferred", "anti", "none")  # prior images shown: pref. + anti-pref., pref., anti-pref., none
N_PRIOR, N_TRIALS, N_BINS = 18, 100, 5
BAND = (20, 80)  # percentiles of the trial pool
MAX_POOL = 400  # images of the band kept (evenly over it) when a source holds more


def load_screening(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,H,W,3], responses float [N]) from a screening ``.npz``."""
    try:
        data = np.load(path, allow_pickle=False)
        images, responses = np.asarray(data["images"]), np.asarray(data["responses"], dtype=np.float64).reshape(-1)
    except (OSError, ValueError, KeyError) as exc:
        raise StimoptError(f"{path} is not a screening file (.npz with 'images' [N,H,W,3] and 'responses' [N]): {exc}") from None
    if images.ndim == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
        images = images.transpose(0, 2, 3, 1)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) != len(responses):
        raise StimoptError(f"{path}: 'images' must be [N,H,W,3] with one response each; got {images.shape} and {responses.shape}")
    if images.dtype != np.uint8:
        images = (np.clip(images.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    return images, responses


def run_responses(run_dir: Path) -> tuple[list, np.ndarray, dict]:
    """(codes, responses, config) of a run's evaluated stimuli (bank items: their mean response)."""
    from contextlib import closing

    from stimopt import run_reader

    with closing(run_reader.connect(run_dir)) as db:
        rows = db.execute("SELECT code, bank_index, response FROM evaluations WHERE response IS NOT NULL AND "
                          f"{run_reader.stimuli_filter(db)} ORDER BY id").fetchall()  # not references or repeats
        config = json.loads((db.execute("SELECT value FROM meta WHERE key='config'").fetchone() or ["{}"])[0])
    if rows and rows[0][0] is None:  # a bank: one image per item, its mean response over presentations
        sums: dict[int, list[float]] = {}
        for _, index, r in rows:
            sums.setdefault(int(index), []).append(r)
        return list(sums), np.array([np.mean(v) for v in sums.values()]), config
    return [np.frombuffer(c, dtype=np.float32) for c, _, _ in rows], np.array([r for *_, r in rows]), config


def design(responses: np.ndarray, n_trials: int = N_TRIALS, n_prior: int = N_PRIOR, n_bins: int = N_BINS,
           seed: int = 0, source: str = "") -> dict:
    """Which images are the priors and which pairs are the trials (indices into ``responses``)."""
    r = np.asarray(responses, dtype=np.float64)
    order = np.argsort(-r, kind="stable")
    preferred, anti = order[:n_prior], order[::-1][:n_prior]
    lo, hi = np.percentile(r, BAND)
    taken = set(preferred.tolist()) | set(anti.tolist())
    pool = np.array([i for i in np.argsort(r, kind="stable") if lo <= r[i] <= hi and i not in taken], dtype=np.int64)
    if len(pool) > MAX_POOL:
        pool = pool[np.linspace(0, len(pool) - 1, MAX_POOL).round().astype(int)]
    per_bin = -(-n_trials // n_bins)
    pairs_needed = per_bin * n_bins
    n_pairs = len(pool) * (len(pool) - 1) // 2
    if len(r) < 2 * n_prior or n_pairs < pairs_needed:
        need = int(np.ceil((1 + np.sqrt(1 + 8 * pairs_needed)) / 2))
        raise StimoptError(
            f"{source or 'the source'} has {len(r)} images with a response: too few for {n_prior} + {n_prior} prior images "
            f"and {n_trials} trials (those need {need} images between the {BAND[0]}th and {BAND[1]}th response "
            f"percentiles besides the priors; it has {len(pool)})")
    i, j = np.triu_indices(len(pool), k=1)
    diff = np.abs(r[pool[i]] - r[pool[j]])
    edges = np.quantile(diff, np.linspace(0, 1, n_bins + 1))
    which = np.clip(np.searchsorted(edges, diff, side="right") - 1, 0, n_bins - 1)
    rng = np.random.default_rng(seed)
    trials = []
    for b in range(n_bins):
        members = np.flatnonzero(which == b)
        if len(members) < per_bin:  # ties in the differences: borrow the nearest pairs
            members = np.argsort(np.abs(diff - (edges[b] + edges[b + 1]) / 2), kind="stable")[:per_bin]
        for k in rng.choice(members, size=per_bin, replace=False):
            a, c = int(pool[i[k]]), int(pool[j[k]])
            if rng.random() < 0.5:
                a, c = c, a
            trials.append({"left": a, "right": c, "bin": b + 1})
    rng.shuffle(trials)
    return {"preferred": preferred.tolist(), "anti": anti.tolist(), "trials": trials[:n_trials],
            "bin_edges": [float(e) for e in edges], "band": [float(lo), float(hi)]}


def write_experiment(out: Path, images_of, responses: np.ndarray, plan: dict, condition: str, meta: dict) -> Path:
    """``out/index.html`` and ``out/images/``; ``images_of(indices)`` gives uint8 images [k,H,W,3]."""
    from stimopt.html_images import png_bytes
    from stimopt.html_templates import environment
    from stimopt.psychophysics_page import PAGE

    used = sorted({*plan["preferred"], *plan["anti"], *(t[s] for t in plan["trials"] for s in ("left", "right"))})
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = {}
    for idx, img in zip(used, images_of(used)):
        names[idx] = f"images/{idx:06d}.png"
        (out / names[idx]).write_bytes(png_bytes(img if img.shape[-1] == 3 else np.repeat(img, 3, axis=-1)))
    experiment = {
        **meta, "condition": condition, "conditions": list(CONDITIONS), "bin_edges": plan["bin_edges"],
        "band": plan["band"],
        "preferred": [{"image": names[i], "id": i} for i in plan["preferred"]],
        "anti": [{"image": names[i], "id": i} for i in plan["anti"]],
        "trials": [{"trial": k + 1, "bin": t["bin"], "left": {"id": t["left"], "image": names[t["left"]], "response": float(responses[t["left"]])},
                    "right": {"id": t["right"], "image": names[t["right"]], "response": float(responses[t["right"]])}}
                   for k, t in enumerate(plan["trials"])],
    }
    (out / "experiment.json").write_text(json.dumps(experiment, indent=1) + "\n")
    html = environment(**{"psy.html": PAGE}).get_template("psy.html").render(
        experiment_json=json.dumps(experiment).replace("</", "<\\/"), n_prior=len(plan["preferred"]), n_trials=len(plan["trials"]))
    (out / "index.html").write_text(html)
    return out / "index.html"


def build(source: Path, out: Path, condition: str = "both", n_trials: int = N_TRIALS, seed: int = 0) -> Path:
    if condition not in CONDITIONS:
        raise StimoptError(f"--condition must be one of {', '.join(CONDITIONS)}, got '{condition}'")
    from stimopt import run_reader

    if run_reader.store_path(source).exists():
        codes, responses, config = run_responses(source)
        plan = design(responses, n_trials=n_trials, seed=seed, source=str(source))
        from stimopt.html_images import rebuild_generator, render

        generator = rebuild_generator(config)

        def images_of(indices):
            return render(generator, [codes[i] for i in indices])
        meta = {"source": source.name, "kind": "run", "direction": config.get("direction"),
                "target": (config.get("target") or {}).get("_target_") or (config.get("target") or {}).get("name")}
    elif source.is_file():
        images, responses = load_screening(source)
        plan = design(responses, n_trials=n_trials, seed=seed, source=str(source))

        def images_of(indices):
            return images[np.asarray(indices, dtype=np.int64)]
        meta = {"source": source.name, "kind": "screening"}
    else:
        raise StimoptError(f"{source} is neither a run directory (no evaluations.sqlite) nor a screening file (.npz)")
    return write_experiment(out, images_of, responses, plan, condition, {**meta, "seed": seed, "n_trials": n_trials})


def main(argv=None) -> None:
    from stimopt import psychophysics_analyze, psychophysics_serve

    parser = argparse.ArgumentParser(prog="stimopt-psychophysics", description="The two-choice psychophysics experiment (paper 000, A.1.4).")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="a static web experiment from a run directory or a screening .npz")
    b.add_argument("source", type=Path)
    b.add_argument("--out", type=Path, required=True, help="folder for index.html and its images")
    b.add_argument("--condition", default="both", help=f"prior images shown: {', '.join(CONDITIONS)} (a page URL may pass ?condition=)")
    b.add_argument("--trials", type=int, default=N_TRIALS)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--serve", action="store_true", help="serve the page on 127.0.0.1 and collect result files into OUT/results/")
    b.add_argument("--port", type=int, default=None, help="port of --serve (required with it)")
    a = sub.add_parser("analyze", help="accuracy per difficulty bin and condition, with a figure")
    a.add_argument("files", type=Path, nargs="+", help="result .json files (or folders of them)")
    a.add_argument("--figure", type=Path, default=Path("psychophysics.png"))
    args = parser.parse_args(argv)
    try:
        if args.command == "analyze":
            print(psychophysics_analyze.report(args.files, args.figure))
            return
        if args.serve and args.port is None:
            raise StimoptError("--serve needs --port N (the server listens on 127.0.0.1 only)")
        if args.trials < 1:
            raise StimoptError(f"--trials must be positive, got {args.trials}")
        page = build(args.source, args.out, condition=args.condition, n_trials=args.trials, seed=args.seed)
        print(page)
        if args.serve:
            psychophysics_serve.serve(args.out, args.port)
    except StimoptError as exc:
        print(f"stimopt-psychophysics: error: {exc}", file=sys.stderr)
        sys.exit(2)
