"""optimizer=cmaes skips pycma's hash archive of asked solutions where the genotype is the solution itself:
the same codes and step sizes as with the archive, and the archive is kept where it is needed."""
import cma
import numpy as np
import pytest

import stimopt
from stimopt_plugins.cma import CMAES


def _with_archive(opt):
    """The optimizer as it was before the archive was skipped."""
    opt._lean = False
    opt.es.sent_solutions = cma.evolution_strategy.get_CMASolutionDict(True)()


def _trace(kw, space, archive: bool, generations=25, popsize=12):
    opt = CMAES(**kw)
    opt.setup(space, seed=5, budget=generations * popsize, batch_size=popsize)
    if archive:
        _with_archive(opt)
    rng = np.random.default_rng(0)
    codes, sigmas = [], []
    for g in range(generations):
        c = opt.ask(popsize if g < generations - 1 else 7)  # a short last batch too
        s = -np.sum((c - 0.4) ** 2, axis=1) + 0.05 * rng.standard_normal(len(c))
        if g % 5 == 2:
            s[1] = np.nan  # a missing score
        opt.tell(c, s)
        codes.append(c[:7].copy())
        sigmas.append(opt.es.sigma)
    return np.stack(codes), sigmas, opt


@pytest.mark.parametrize("kw", [{"sigma0": 0.5}, {"adapt_sigma": "csa"}, {"sampler": "vd"}, {"diagonal": False}])
def test_skipping_the_archive_asks_the_same_codes(kw):
    space = stimopt.ContinuousSpace(dim=40 if kw.get("diagonal", True) else 12)
    a, sa, lean = _trace(kw, space, archive=False)
    b, sb, _ = _trace(kw, space, archive=True)
    lean.ask(7)
    assert lean._lean and len(lean.es.sent_solutions) == 0  # the archive was skipped: an ask files nothing
    assert np.array_equal(a, b) and sa == sb


@pytest.mark.parametrize("kw, space", [({"elitist": True}, stimopt.ContinuousSpace(dim=10)),
                                       ({"bounds": "transform"}, stimopt.ContinuousSpace(dim=10, low=0.0, high=1.0))])
def test_the_archive_stays_where_pycma_reads_it(kw, space):
    """Elitism reads the archived genotype of the best; a BoundTransform's genotype is not its solution."""
    _, _, opt = _trace(kw, space, archive=False, generations=3)
    opt.ask(12)
    assert not opt._lean and len(opt.es.sent_solutions) == 12
