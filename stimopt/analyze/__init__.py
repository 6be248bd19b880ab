"""``stimopt-analyze NAME key=value ...``: the analyses of the seed paper ("A Tale of Two Tails") on
any target and bank. Every analysis writes ``out/NAME.json``, ``out/NAME.csv``, ``out/NAME.png``
and one line in ``out/report.md``; the JSON keys are documented in each module and in
docs/analyses.md.

    skewness    response distributions, skewness kappa, one/two-tailed per unit (Fig. 1)
    screen      score a whole bank (chunked, resumable), top and bottom K per neuron (A.1.1)
    quantiles   where a run's preferred / anti-preferred images fall among random bank images (Fig. 2b)
    statistics  low-level image statistics of preferred vs anti-preferred sets (Fig. 4d-e)
    neurons     overlap of sets across neurons, cross-neuron quantile matrix (Fig. 5, Supp. Fig. 8)
    scaling     best response found vs bank size, log-linear fit (Fig. 6a)
    curricula   a student CNN trained on search-chosen sets: held-out R^2 vs set size (Fig. 3, A.1.3)
"""

ANALYSES = ("skewness", "screen", "quantiles", "statistics", "neurons", "scaling", "curricula")
