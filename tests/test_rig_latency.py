"""Latency hiding (the engine's lookahead=1): generation g+1 asked, generated and encoded while the
target evaluates g; the same run as without it for an optimizer whose ask ignores its answers,
resumable exactly, refused for optimizers that cannot be asked ahead; the rig reuses the prepared
images (same files, same request id)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stimopt.engine import Run
from stimopt.errors import StimoptError
from stimopt.interleave import Interleave, References
from stimopt.objective import Objective
from stimopt.store import RunStore
from stimopt_plugins.image_codes import PixelGenerator
from stimopt_plugins.cma import CMAES
from stimopt_plugins.random_search import RandomSearch
from stimopt_plugins.rig import RigTarget
from test_rig import images
from test_rig_references import NoisyRed, reference_folder


def make(tmp_path, name, lookahead, budget=24, opt=None, references=None):
    gen = PixelGenerator(size=8, resolution=4)
    opt = opt or RandomSearch()
    opt.setup(gen.space, seed=0, budget=budget, batch_size=4)
    run = Run(target=NoisyRed(), generator=gen, optimizer=opt, objective=Objective("max"),
              store=RunStore(tmp_path / name / "evaluations.sqlite"), budget=budget, batch_size=4,
              on_bad_response="skip", run_dir=tmp_path / name, lookahead=lookahead,
              interleave=Interleave(references), budget_counts="presentations")
    run.restore()
    return run


def rows(run):
    return [(r["generation"], r["position"], r["kind"], r["response"], None if r["code"] is None else r["code"].tobytes())
            for r in run.store.shown()]


def test_lookahead_is_the_same_run_for_an_optimizer_whose_ask_ignores_answers(tmp_path, one_thread):
    refs = References(source=str(reference_folder(tmp_path)), n=2, every=3)
    plain = make(tmp_path, "plain", 0, budget=30, references=refs)
    plain.run()
    ahead = make(tmp_path, "ahead", 1, budget=30, references=refs)
    ahead.run()
    assert rows(ahead) == rows(plain) and ahead.progress.n_presentations == plain.progress.n_presentations == 30
    assert ahead._ahead is None  # nothing asked past the budget
    plain.store.close()
    ahead.store.close()


def test_lookahead_resumes_with_the_codes_it_asked_ahead(tmp_path, one_thread):
    whole = make(tmp_path, "whole", 1)
    whole.run()
    part = make(tmp_path, "part", 1)
    for _ in range(2):
        part.step()
    asked = part._ahead["codes"].copy()
    part.store.close()  # "killed" after generation 1's commit, generation 2 already asked
    again = make(tmp_path, "part", 1)
    np.testing.assert_array_equal(again._ahead["codes"], asked)  # from the checkpoint
    again.run()
    assert rows(again) == rows(whole)
    whole.store.close()
    again.store.close()


def test_lookahead_is_refused_for_an_optimizer_that_cannot_be_asked_ahead(tmp_path):
    with pytest.raises(StimoptError, match="asks_ahead"):
        make(tmp_path, "cma", 1, opt=CMAES())
    with pytest.raises(StimoptError, match="lookahead must be 0 or 1"):
        make(tmp_path, "two", 2)


def answer(rig, g, n):
    """The lab answered generation g at once (its inbox file written before stimopt reads it)."""
    lines = [json.dumps({"generation": g, "index": i, "repeat": 0, "counts": [i + 1 + g]}) for i in range(n)]
    (rig / "inbox").mkdir(parents=True, exist_ok=True)
    (rig / "inbox" / f"gen_{g:06d}.jsonl").write_text("\n".join(lines) + "\n")


def test_rig_prepared_images_publish_the_same_generation(tmp_path, monkeypatch):
    """prepare() (called while generation 0 is out) converts, encodes and writes generation 1's
    images into its hidden folder; publishing 1 keeps those files (same inodes) and gives the same
    bytes, request id and answers as without it, also when other images (references) follow."""
    from stimopt_plugins.rig import target as rig_target

    converted = []
    real = rig_target.images_to_uint8
    monkeypatch.setattr(rig_target, "images_to_uint8", lambda im: converted.append(len(im)) or real(im))
    first, x, refs = images(3, seed=9), images(5, seed=1), images(2, seed=2)
    for name, batch in (("alone", x), ("with_refs", torch.cat([x, refs]))):
        out = {}
        for mode in ("plain", "prepared"):
            rig = tmp_path / name / mode
            target = RigTarget(rig, timeout_s=5, poll_s=0.005)
            answer(rig, 0, 3)
            answer(rig, 1, len(batch))
            if mode == "prepared":
                target.prepare(x)  # the engine's lookahead thread, while generation 0 is out
                staged = rig / "outbox" / ".gen_000001.tmp" / "img_0000.png"
                inode = staged.stat().st_ino
            target.evaluate(first)
            converted.clear()
            r = target.evaluate(batch)
            assert converted == ([] if name == "alone" else [2]) if mode == "prepared" else [len(batch)]
            folder = rig / "outbox" / "gen_000001"
            if mode == "prepared":
                assert (folder / "img_0000.png").stat().st_ino == inode  # written ahead, renamed into place
            manifest = json.loads((folder / "manifest.json").read_text())
            out[mode] = (manifest["request_id"], [(folder / im["file"]).read_bytes() for im in manifest["images"]], r)
            assert not list((rig / "outbox").glob(".gen_*"))
        assert out["plain"][0] == out["prepared"][0] and out["plain"][1] == out["prepared"][1]
        np.testing.assert_array_equal(out["plain"][2], out["prepared"][2])
    rig = tmp_path / "other"
    target = RigTarget(rig, timeout_s=0.05, poll_s=0.01)
    target.prepare(x)
    target.evaluate(first)
    target.evaluate(refs)  # not the prepared images: made afresh, the staged folder replaced
    assert len(json.loads((rig / "outbox" / "gen_000001" / "manifest.json").read_text())["images"]) == 2
    assert sorted(p.name for p in (rig / "outbox" / "gen_000001").iterdir()) == ["img_0000.png", "img_0001.png", "manifest.json"]
    assert target._prepared is None
