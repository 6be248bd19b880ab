"""target=rig: what the lab's software writes must never kill or fool a session (issue 13).

Each test prefills (or breaks) the rig folder as a lab could, then runs one generation."""
from __future__ import annotations

import json
import os
import subprocess
import threading

import numpy as np
import pytest
import torch

from conftest import BIN, cli_env, run_cli
from stimopt.errors import StimoptError
from stimopt_plugins.rig import RigTarget, gen_name


def images(n=4, seed=0, size=8):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def trial(index, repeat=0, counts=(5,), g=0, **extra) -> str:
    return json.dumps({"generation": g, "index": index, "repeat": repeat, "counts": list(counts), **extra})


def answer(rig, lines, g=0) -> None:
    (rig / "inbox").mkdir(parents=True, exist_ok=True)
    (rig / "inbox" / f"{gen_name(g)}.jsonl").write_text("".join(line + "\n" for line in lines))


def run_generation(rig, n=4, g=0, seed=0, **kw):
    target = RigTarget(rig, **{"timeout_s": 0.3, "poll_s": 0.01, **kw})
    target.load_state_dict({"generation": g})
    return target.evaluate(images(n, seed)), target.last


def rejected(rig) -> list[dict]:
    path = rig / "rejected.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_a_value_split_over_two_lines_is_two_malformed_lines_and_resume_reads_the_same(tmp_path):
    split = ['[{"generation": 0, "index": 1, "repeat": 0, "counts": [3]}',
             '{"generation": 0, "index": 2, "repeat": 0, "counts": [4]}]']
    answer(tmp_path, [trial(0, counts=[7]), *split, trial(3, counts=[9])])
    r, last = run_generation(tmp_path)
    np.testing.assert_array_equal(r[[0, 3]], [7, 9])
    assert np.isnan(r[[1, 2]]).all() and last["malformed"] == 2 and last["trials"] == 2
    assert [(e["line"], e["kind"]) for e in rejected(tmp_path)] == [(2, "malformed"), (3, "malformed")]
    again, last2 = run_generation(tmp_path)  # a resumed run reads the same inbox: same answer
    np.testing.assert_array_equal(again, r)
    assert last2["malformed"] == 2 and last2["published"] is False


def test_deep_nesting_is_one_malformed_line(tmp_path):
    answer(tmp_path, ["[" * 100_000, "{" * 50_000, '{"a":' * 30_000, trial(0, counts=[2])])
    r, last = run_generation(tmp_path, n=1)
    assert r[0] == 2 and last["malformed"] == 3 and last["trials"] == 1


@pytest.mark.parametrize("glue", ["", ",", " ", ", "])
def test_two_objects_on_one_line_reject_that_line_only(tmp_path, glue):
    answer(tmp_path, [trial(0, counts=[1]), trial(1, counts=[2]) + glue + trial(2, counts=[3]), trial(3, counts=[4])])
    r, last = run_generation(tmp_path)
    assert r[0] == 1 and r[3] == 4  # the file's last valid trial counts
    assert np.isnan(r[[1, 2]]).all() and last["malformed"] == 1 and last["trials"] == 2
    assert rejected(tmp_path)[0]["line"] == 2


def test_index_and_repeat_must_be_integers(tmp_path):
    bad = [trial(1.9, counts=[50]), trial(True, counts=[60]), trial("1", counts=[61]), trial(None, counts=[62]),
           trial(1, repeat=0.5, counts=[63]), trial(1, repeat=True, counts=[64]), trial(1, repeat=-1, counts=[65]),
           trial(1e20, counts=[66]), trial(-1, counts=[67]), trial(4, counts=[68])]
    answer(tmp_path, [*bad, trial(1, counts=[7]), trial(2.0, counts=[8])])  # 2.0: an integral number is 2
    r, last = run_generation(tmp_path)
    assert r[1] == 7 and r[2] == 8 and np.isnan(r[[0, 3]]).all()
    assert last["malformed"] == len(bad) and last["trials"] == 2
    assert all("index" in e["reason"] or "repeat" in e["reason"] for e in rejected(tmp_path))


def test_generation_true_is_not_generation_one(tmp_path):
    answer(tmp_path, [trial(0, g=True, counts=[50]), trial(0, g=1, counts=[3])], g=1)
    r, last = run_generation(tmp_path, n=1, g=1)
    assert r[0] == 3 and last["malformed"] == 1


def test_invalid_counts_are_logged_and_never_displace_a_good_repeat(tmp_path):
    lines = [trial(0, 0, ["NaN"]).replace('"NaN"', "NaN"), trial(0, 1, [5]),   # NaN next to a good repeat
             trial(1, 0, [-1]), trial(1, 1, [1e308]), trial(1, 2, ["Infinity"]).replace('"Infinity"', "Infinity"),
             trial(1, 3, [1]).replace("[1]", "[1e400]"), trial(1, 4, [1]).replace("[1]", "[" + "9" * 400 + "]"),
             trial(1, 5, [True]), trial(1, 6, ["5"]), trial(1, 7, [5, 6]), trial(1, 8, [[5]])]
    answer(tmp_path, lines)
    r, last = run_generation(tmp_path, n=2, presentations=2)
    assert r[0] == 5 and np.isnan(r[1])
    assert last["answered"] == 1 and last["missing"] == 1 and last["trials"] == 1
    assert last["invalid"] == 6 and last["malformed"] == 4  # out-of-range numbers vs not numbers / wrong shape
    kinds = {e["line"]: e["kind"] for e in rejected(tmp_path)}
    assert kinds[1] == "invalid" and len(kinds) == len(lines) - 1
    # a NaN line does not occupy its (index, repeat): the lab may send that trial again
    answer(tmp_path / "b", [trial(0, 0, ["NaN"]).replace('"NaN"', "NaN"), trial(0, 0, [4])])
    r2, last2 = run_generation(tmp_path / "b", n=1)
    assert r2[0] == 4 and last2["duplicates"] == 0 and last2["invalid"] == 1


def test_only_the_first_presentations_trials_of_an_image_count(tmp_path):
    answer(tmp_path, [trial(0, rep, [rep]) for rep in range(50)] + [trial(1, 3, [8]), trial(1, 0, [2])])
    r, last = run_generation(tmp_path, n=2, presentations=1)
    assert r[0] == 0 and r[1] == 8  # in file order, whatever the repeat numbers
    assert last["trials"] == 2 and last["extra"] == 50 and not last["timed_out"]
    answer(tmp_path / "c", [trial(0, rep, [rep]) for rep in range(50)])
    r3, last3 = run_generation(tmp_path / "c", n=1, presentations=3)
    assert r3[0] == 1 and last3["trials"] == 3 and last3["extra"] == 47


def _in_thread(fn):
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("value", fn()), daemon=True)
    th.start()
    th.join(10)
    assert not th.is_alive(), "the generation never ended"
    return out["value"]


def test_a_fifo_at_the_inbox_path_does_not_block_the_timeout(tmp_path):
    (tmp_path / "inbox").mkdir()
    os.mkfifo(tmp_path / "inbox" / "gen_000000.jsonl")
    r, last = _in_thread(lambda: run_generation(tmp_path, n=2))
    assert np.isnan(r).all() and last["timed_out"] and last["missing"] == 2
    assert "not a regular file" in last["inbox_problem"]


def test_a_directory_at_the_inbox_path_is_no_answer(tmp_path):
    (tmp_path / "inbox" / "gen_000000.jsonl").mkdir(parents=True)
    r, last = run_generation(tmp_path, n=2)
    assert np.isnan(r).all() and last["timed_out"] and "directory" in last["inbox_problem"]


def test_an_inbox_symlink_leaving_the_rig_folder_is_not_read(tmp_path):
    rig, outside = tmp_path / "rig", tmp_path / "outside.jsonl"
    outside.write_text(trial(0, counts=[5]) + "\n")
    (rig / "inbox").mkdir(parents=True)
    (rig / "inbox" / "gen_000000.jsonl").symlink_to(outside)
    r, last = run_generation(rig, n=1)
    assert np.isnan(r).all() and "outside" in last["inbox_problem"]


@pytest.mark.parametrize("kind", ["link_to_outside_with_manifest", "dangling_link", "file", "dir_without_manifest"])
def test_whatever_sits_at_outbox_gen_n_is_moved_aside_and_the_generation_published(tmp_path, kind):
    rig, outside = tmp_path / "rig", tmp_path / "outside"
    outside.mkdir()
    (outside / "manifest.json").write_text('{"request_id": "x"}')
    (outside / "keep.txt").write_text("theirs")
    (rig / "outbox").mkdir(parents=True)
    spot = rig / "outbox" / "gen_000000"
    if kind == "link_to_outside_with_manifest":
        spot.symlink_to(outside, target_is_directory=True)
    elif kind == "dangling_link":
        spot.symlink_to(tmp_path / "nowhere")
    elif kind == "file":
        spot.write_text("not a folder")
    else:
        spot.mkdir()
        (spot / "note.txt").write_text("lab's")
    r, last = run_generation(rig, n=2)
    assert last["published"] and spot.is_dir() and not spot.is_symlink()
    assert (spot / "manifest.json").exists() and np.isnan(r).all()
    assert sorted(os.listdir(outside)) == ["keep.txt", "manifest.json"]  # outside: untouched
    assert (outside / "manifest.json").read_text() == '{"request_id": "x"}'
    assert len(list((rig / "outbox" / "stale").iterdir())) == 1  # what was there is kept, moved aside


@pytest.mark.parametrize("name", ["log.jsonl", "rejected.jsonl", "outbox", "inbox", "outbox/stale", "inbox/stale"])
def test_a_symlink_leaving_the_rig_folder_is_refused_in_one_line(tmp_path, name):
    rig, outside = tmp_path / "rig", tmp_path / "outside"
    outside.mkdir()
    (rig / "outbox").mkdir(parents=True)
    (rig / "inbox").mkdir()
    link = rig / name
    if link.exists():
        link.rmdir()
    link.symlink_to(outside / "x.jsonl" if name.endswith(".jsonl") else outside)
    with pytest.raises(StimoptError, match="outside the rig folder") as err:
        RigTarget(rig, timeout_s=0.2)
    assert name in str(err.value) and "\n" not in str(err.value)
    assert os.listdir(outside) == []


def test_a_log_symlink_made_during_the_run_is_not_followed(tmp_path):
    rig, outside = tmp_path / "rig", tmp_path / "outside.jsonl"
    outside.write_text("theirs\n")
    target = RigTarget(rig, timeout_s=0.2, poll_s=0.01)
    target.evaluate(images(1))
    (rig / "log.jsonl").unlink()
    (rig / "log.jsonl").symlink_to(outside)
    answer(rig, ["garbage"], g=1)
    (rig / "rejected.jsonl").symlink_to(outside)
    r = target.evaluate(images(1, seed=1))  # the session goes on
    assert np.isnan(r).all() and outside.read_text() == "theirs\n"
    assert target.last["log_problem"] and "outside the rig folder" in target.last["log_problem"]


def test_a_stale_symlink_made_during_the_run_moves_nothing_outside(tmp_path):
    rig, outside = tmp_path / "rig", tmp_path / "outside"
    outside.mkdir()
    RigTarget(rig, timeout_s=0.2).evaluate(images(2))
    target = RigTarget(rig, timeout_s=0.2)
    (rig / "outbox" / "stale").symlink_to(outside)
    with pytest.raises(StimoptError, match="outside the rig folder"):
        target.evaluate(images(2, seed=5))  # other images for generation 0: the old one must move aside
    assert os.listdir(outside) == [] and (rig / "outbox" / "gen_000000" / "manifest.json").exists()


def test_blank_lines_crlf_and_a_byte_order_mark_are_fine(tmp_path):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "gen_000000.jsonl").write_bytes(
        b"\xef\xbb\xbf" + trial(0, counts=[1]).encode() + b"\r\n\n   \n" + trial(1, counts=[2]).encode() + b"\r\n")
    r, last = run_generation(tmp_path, n=2)
    np.testing.assert_array_equal(r, [1, 2])
    assert last["malformed"] == 0 and not last["timed_out"]


def test_lines_after_the_done_line_are_not_used(tmp_path):
    answer(tmp_path, [trial(0, counts=[1]), json.dumps({"generation": 0, "done": True}), trial(1, counts=[2])])
    r, last = run_generation(tmp_path, n=2)
    assert r[0] == 1 and np.isnan(r[1]) and last["done_line"] and last["after_done"] == 1
    answer(tmp_path / "b", [trial(0, counts=[1]), json.dumps({"generation": 0, "done": "yes"})])
    _, last2 = run_generation(tmp_path / "b", n=2)
    assert not last2["done_line"] and last2["malformed"] == 1


@pytest.mark.slow
def test_a_lab_that_never_answers_ends_the_run_cleanly_and_says_so(tmp_path):
    """End to end: stimopt and stimopt-rig-sim as processes; the lab takes every manifest and is silent."""
    rig, run = tmp_path / "rig", tmp_path / "run"
    env = cli_env(OMP_NUM_THREADS="1")
    sim = subprocess.Popen([str(BIN / "stimopt-rig-sim"), str(rig), "--input-size", "16", "--latency", "600"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done = run_cli(["experiment=rig", f"target.rig_dir={rig}", "target.timeout_s=0.5", "generator=pixels",
                        "generator.size=16", "generator.resolution=4", "optimizer=random", "budget=8", "batch_size=4",
                        "logger=none", f"hydra.run.dir={run}"], cwd=tmp_path, env=env, timeout=240)
    finally:
        sim.kill()
        sim.wait(30)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert "no response was recorded in 8 evaluations (8 missing" in done.stdout
    log = [json.loads(x) for x in (rig / "log.jsonl").read_text().splitlines()]
    assert [(e["timed_out"], e["missing"], e["answered"]) for e in log] == [(True, 4, 0), (True, 4, 0)]
    assert all(0.5 <= e["total_s"] < 5 for e in log)  # the timeout fired as documented, no longer
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_response"] is None and summary["n_missing"] == 8


def test_a_named_pipe_where_a_log_goes_is_refused_in_one_line(tmp_path):
    os.mkfifo(tmp_path / "log.jsonl")
    with pytest.raises(StimoptError, match="log.jsonl is a named pipe"):
        RigTarget(tmp_path, timeout_s=0.2)


def test_a_big_file_is_read_in_bounded_polls_and_a_rewritten_file_is_reported(tmp_path, monkeypatch):
    from stimopt_plugins.rig import inbox

    monkeypatch.setattr(inbox, "MAX_POLL_BYTES", 100)
    path = tmp_path / "gen_000000.jsonl"
    path.write_text("".join(trial(i % 3, i // 3) + "\n" for i in range(9)))
    reader = inbox.InboxReader(path, 0, "r" * 16, 3, 1, repeats=3)
    reader.poll(final=True)  # not at the end of the file: the last piece read is no truncated line
    assert reader.stats["truncated"] == 0 and 0 < reader.offset <= 100
    polls = 1
    while not reader.complete():
        reader.poll()
        polls += 1
    assert reader.stats["trials"] == 9 and polls >= 5 and not reader.rejected
    path.write_text(trial(0) + "\n")  # rewritten shorter by the lab
    reader.poll()
    assert "shrank" in reader.problem and reader.stats["trials"] == 9
