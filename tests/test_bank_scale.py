"""The graph stage's compressed indexes (issue 18): IVF-PQ / IVF-SQ8 graphs report their recall
against exact search in the manifest, the walk runs on them, and exact search streams the bank."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from stimopt.bank import FeatureSpec, build_bank, load_bank
from stimopt.bank.cli import _parser
from stimopt.bank.graph import build_graph, recall_at
from stimopt.bank.index import describe, exact_knn, make_index
from stimopt.bank.manifest import info_text
from stimopt_plugins.imagebeagle import Walk

IVFPQ_RECALL_FLOOR = 0.5  # recall@10 of the tiny ivfpq bank's graph vs exact search (measured 0.69)


def test_ivfpq_bank_stores_its_recall_and_the_walk_runs_on_it(tmp_path):
    out = tmp_path / "bank"
    args = _parser().parse_args(["build", "demo:400", str(out), "--method", "ivfpq", "--nprobe", "8", "--k", "8"])
    build_bank(args.source, out, features=FeatureSpec(model="pixels", input_size=8), k=args.k, method=args.method,
               nprobe=args.nprobe, image_size=24, shard_size=200)
    bank = load_bank(out)
    g = bank.manifest["graph"]
    assert g["method"] == "ivfpq" and g["index"].startswith("IVF") and ",PQ" in g["index"]
    assert g["index_bytes"] < bank.features.nbytes  # the graph jobs read codes, not the vectors
    assert g["recall_queries"] == 400 and g["recall_at_10"] >= IVFPQ_RECALL_FLOOR
    assert g["recall_at_10"] == round(recall_at(np.asarray(bank.features), bank.graph, 1000), 4)
    assert not (np.asarray(bank.graph) == np.arange(400)[:, None]).any()
    assert "(ivfpq), recall@10 vs exact" in info_text(bank.manifest, out)
    space = bank.space
    walk = Walk(L=10, K=4, M=2)
    walk.setup(space, seed=0, budget=120, batch_size=20)
    w = np.random.default_rng(0).normal(size=space.features.shape[1])
    asked = []
    while len(asked) < 120:
        codes = walk.ask(20)
        asked += codes.tolist()
        walk.tell(codes, np.asarray(space.features[codes]) @ w)
    assert len(set(asked)) == 120 and max(asked) < 400


@pytest.mark.parametrize("method,name", [("ivfpq", ",PQ"), ("ivfsq", ",SQ8"), ("ivf", ",Flat")])
def test_compressed_indexes_are_smaller_and_measured(tmp_path, method, name):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3000, 32)) * np.arange(1, 33) ** -0.5).astype(np.float32)
    info = build_graph(x, 10, tmp_path / "g.npy", method=method, nprobe=8, recall_queries=500)
    assert name in info["index"] and info["nprobe"] == 8
    assert 0.2 < info["recall_at_10"] <= 1.0 and info["recall_queries"] == 500
    flat = 3000 * 32 * 4
    assert info["index_bytes"] < {"ivfpq": flat / 4, "ivfsq": flat / 2, "ivf": 2 * flat}[method]


def test_exact_search_streams_the_bank_block_by_block():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5000, 16)).astype(np.float32)
    q = x[:50]
    assert np.array_equal(exact_knn(q, x, 7, block=600), faiss.knn(q, x, 7)[1])
    assert describe(make_index(x, "ivfsq")) == "IVF128,SQ8"
