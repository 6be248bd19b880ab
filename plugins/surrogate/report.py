"""The surrogate's report: what the model learned (held-out R^2, penalty, noise), the best it
predicts among the images not shown yet, and the best/worst shown."""
from __future__ import annotations

import numpy as np


def surrogate_report(opt) -> dict:
    """What the model learned: held-out R^2, the predicted best not yet shown, best/worst shown."""
    out = {
        "scores_note": "score = response for direction=max and -response for direction=min",
        "n_images": len(opt.items),
        "n_presentations": int(sum(opt.counts)),
        "n_missing": int(sum(opt.missing.values())),
        "dropped_generations": opt.dropped_generations,
    }
    if len(opt.items) < 3:
        return out
    fit, x, y, counts = opt._refit()
    out.update({"heldout_r2": round(float(fit["r2_loo"]), 4), "alpha": fit["alpha"], "noise_sigma": fit["sigma"],
                "model": f"ridge ({opt.kernel}, layers {'+'.join(opt.layers)})"})
    idx, val = opt._scan(fit["beta"][:, None], fit["intercept"], opt.n_report, opt.shown)
    keep = np.isfinite(val[:, 0])
    out["predicted_top_unshown"] = [{"index": int(i), "predicted_score": float(v)} for i, v in zip(idx[keep, 0], val[keep, 0])]
    items = np.asarray(opt.items)
    means = y
    pred = x @ fit["beta"] + fit["intercept"]
    order = np.argsort(-means, kind="stable")
    k = min(opt.n_report, len(items))

    def entries(sel):
        return [{"index": int(items[j]), "score": float(means[j]), "presentations": int(counts[j]),
                 "predicted_score": float(pred[j])} for j in sel]

    out["best"] = entries(order[:k])  # highest scores: preferred (max) / anti-preferred (min)
    out["worst"] = entries(order[::-1][:k])
    j = int(np.argmax(pred))
    out["observed_best"] = out["best"][0]
    best_pred = max(float(pred[j]), float(val[0, 0]) if keep.any() else -np.inf)
    out["predicted_best"] = (
        {"index": int(items[j]), "predicted_score": float(pred[j]), "shown": True}
        if float(pred[j]) >= best_pred else {"index": int(idx[0, 0]), "predicted_score": float(val[0, 0]), "shown": False}
    )
    return out
