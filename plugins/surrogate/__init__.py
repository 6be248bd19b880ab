"""Surrogate-guided bank search: learn the response from the bank's features, show what it predicts best.

``optimizer=surrogate`` searches a :class:`stimopt.BankSpace` (a bank built with features). Each
generation it

1. refits a ridge regression of score on the bank features of every image shown so far (features
   standardized with statistics of a fixed sample of the bank; the ridge penalty is chosen by the
   data: exact leave-one-out error over a grid, from one SVD; row weights = presentations x
   exp(``focus`` x standardized score), so the model is most accurate where the scores are high);
2. draws posterior weight vectors (Bayesian ridge: noise variance from the residuals, prior
   variance noise/alpha) or, with ``ensemble=E``, refits E bootstrap models;
3. scans the whole bank in chunks (memory-mapped features, one matrix product per chunk) and fills
   the batch: slot 0 takes the argmax of the posterior mean (exploitation), the others each the
   argmax of their own posterior draw (Thompson sampling; with ``graded`` the draws' spreads run
   from near 0 to 2 x ``explore`` across the batch; ``anneal`` shrinks ``explore`` as the budget
   is used; ``acquisition=ucb`` ranks by mean + spread instead, ``greedy`` by the mean alone);
   never an image already shown;
4. optionally gives ``coreset_fraction`` of each batch to the best-predicted unshown coreset images
   (diversity), ``neighbours`` of it to the best-predicted unshown kNN-graph neighbours of the best
   images shown, and ``represent`` slots to re-presenting top images whose evidence is weak
   (noisy neurons).

The first ``n_init`` images are drawn uniformly at random (``init=coreset``: the bank's coresets in
order; their farthest-point images are the bank's outliers, a worse first sample for a regression
on the demo bank). Scores are always maximized; the direction lives in the core objective.

Missing responses (NaN): a dropped trial taught nothing, so the image goes back into the pool and
may be shown once more (``retry_missing``, default 1); an all-NaN generation is a dropped block of
trials: nothing is learned from it, it is counted in ``report()['dropped_generations']`` and the
search goes on. The state is compact (the shown indices, their score sums and counts, the RNG):
the model is refit from it, so a resumed run continues exactly.

Modules: :mod:`.search` (the optimizer), :mod:`.model` (model inputs, focus weights),
:mod:`.scan` (the chunked whole-bank argmax), :mod:`.report`; the ridge fit and posterior draws
are the core's :mod:`stimopt.ridge` (shared with the neural encoders).
"""
from __future__ import annotations

from pathlib import Path

import stimopt
from stimopt.ridge import fit_ridge, posterior_draws

from .model import ACQUISITIONS, INITS, KERNELS, FeatureMap, focus_weights
from .scan import scan_bank
from .search import SurrogateSearch

__all__ = ["SurrogateSearch", "fit_ridge", "posterior_draws", "FeatureMap", "focus_weights", "scan_bank",
           "ACQUISITIONS", "INITS", "KERNELS"]


@stimopt.hookimpl
def register_optimizers(register):
    register("surrogate", SurrogateSearch)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
