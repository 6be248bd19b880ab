"""target=rig: the file protocol with the simulated lab, and each fault case as documented."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch

from stimopt.errors import StimoptError
from stimopt_plugins.rig import RigTarget, gen_name
from stimopt_plugins.rig.sim import LabSim


def images(n=6, seed=0, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def lab_in_thread(sim: LabSim, n_generations: int = 1, timeout: float = 20.0):
    """Serve n generations in a thread (the lab's side)."""
    t = threading.Thread(target=sim.serve, kwargs={"idle_exit": timeout, "max_generations": n_generations, "poll_s": 0.01}, daemon=True)
    t.start()
    return t


def inbox_means(rig_dir, g, n, channels=1):
    """What the inbox says, computed independently: mean over distinct (index, repeat) trials."""
    seen, sums, cnt = set(), np.zeros((n, channels)), np.zeros(n)
    for line in (rig_dir / "inbox" / f"{gen_name(g)}.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("generation") != g or rec.get("done") or (rec["index"], rec["repeat"]) in seen:
            continue
        seen.add((rec["index"], rec["repeat"]))
        sums[rec["index"]] += rec["counts"]
        cnt[rec["index"]] += 1
    with np.errstate(invalid="ignore"):
        return np.where(cnt[:, None] > 0, sums / np.maximum(cnt, 1)[:, None], np.nan)


def test_round_trip_with_the_simulated_lab(tmp_path):
    sim = LabSim(tmp_path, weights="random", input_size=16, latency=0.05)
    th = lab_in_thread(sim)
    target = RigTarget(tmp_path, timeout_s=20, presentations=2, poll_s=0.01)
    r = target.evaluate(images())
    th.join(5)
    manifest = json.loads((tmp_path / "outbox" / "gen_000000" / "manifest.json").read_text())
    assert manifest["protocol"] == "stimopt-rig/1" and manifest["repeats"] == 2 and len(manifest["images"]) == 6
    assert all((tmp_path / "outbox" / "gen_000000" / im["file"]).exists() for im in manifest["images"])
    assert r.shape == (6,) and np.isfinite(r).all()
    np.testing.assert_allclose(r, inbox_means(tmp_path, 0, 6)[:, 0])
    assert target.last["trials"] == 12 and not target.last["timed_out"] and target.state_dict() == {"generation": 1}
    assert not list(tmp_path.glob("outbox/.gen_*"))  # published atomically, no temporary left


def test_dropped_trials_average_what_came_and_nan_what_did_not(tmp_path):
    sim = LabSim(tmp_path, weights="random", input_size=16, drop=0.6, seed=3, n_channels=2)
    th = lab_in_thread(sim)
    target = RigTarget(tmp_path, timeout_s=20, presentations=2, n_channels=2, poll_s=0.01)
    r = target.evaluate(images(12))
    th.join(5)
    expected = inbox_means(tmp_path, 0, 12, channels=2)
    assert r.shape == (12, 2)
    np.testing.assert_allclose(r, expected)  # NaN exactly where every repeat was dropped
    assert np.isnan(r).any() and np.isfinite(r).any()
    assert target.last["missing"] == int(np.isnan(expected[:, 0]).sum())
    assert target.last["done_line"] and not target.last["timed_out"]  # the done line ends the wait early
    one = RigTarget(tmp_path / "b", timeout_s=0.2, n_channels=2, channels=[1])
    assert one.n_outputs == 1


def test_truncated_inbox_file_keeps_complete_lines(tmp_path):
    target = RigTarget(tmp_path, timeout_s=0.5, poll_s=0.01)
    box = tmp_path / "inbox" / "gen_000000.jsonl"
    box.write_text('{"generation": 0, "index": 0, "repeat": 0, "counts": [4]}\n{"generation": 0, "index": 1, "rep')
    t0 = time.monotonic()
    r = target.evaluate(images(3))
    assert time.monotonic() - t0 < 3
    assert r[0] == 4 and np.isnan(r[1:]).all()
    assert target.last["truncated"] == 1 and target.last["timed_out"] and target.last["missing"] == 2


def test_a_line_completed_before_the_timeout_counts(tmp_path):
    target = RigTarget(tmp_path, timeout_s=10, poll_s=0.01)
    box = tmp_path / "inbox" / "gen_000000.jsonl"
    box.write_text('{"generation": 0, "index": 0, "repeat": 0, "counts": [4]}\n{"generation": 0, "ind')

    def finish():
        time.sleep(0.3)
        with open(box, "a") as f:
            f.write('ex": 1, "repeat": 0, "counts": [6]}\n')

    threading.Thread(target=finish, daemon=True).start()
    r = target.evaluate(images(2))
    np.testing.assert_allclose(r, [4, 6])
    assert target.last["truncated"] == 0 and target.last["malformed"] == 0 and not target.last["timed_out"]


def test_late_file_times_out_without_blocking_and_does_not_leak_into_the_next_generation(tmp_path):
    sim = LabSim(tmp_path, weights="random", input_size=16, late={0}, late_s=1.0)
    th = lab_in_thread(sim, n_generations=2)
    target = RigTarget(tmp_path, timeout_s=0.4, poll_s=0.01)
    t0 = time.monotonic()
    r0 = target.evaluate(images(4, seed=0))
    assert time.monotonic() - t0 < 2.0 and np.isnan(r0).all() and target.last["timed_out"]
    target.timeout_s = 20
    r1 = target.evaluate(images(4, seed=1))  # generation 1: its own file only
    th.join(5)
    assert np.isfinite(r1).all()
    np.testing.assert_allclose(r1, inbox_means(tmp_path, 1, 4)[:, 0])
    assert (tmp_path / "inbox" / "gen_000000.jsonl").exists()  # the late answers are kept on disk
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["timed_out"] for e in log] == [True, False] and log[0]["missing"] == 4


def test_lines_for_an_old_generation_and_duplicates_are_ignored(tmp_path):
    sim = LabSim(tmp_path, weights="random", input_size=16, old_lines={1}, duplicate=0.5, seed=1)
    th = lab_in_thread(sim, n_generations=2)
    target = RigTarget(tmp_path, timeout_s=20, poll_s=0.01)
    target.evaluate(images(5, seed=0))
    r = target.evaluate(images(5, seed=1))
    th.join(5)
    assert target.last["other_generation"] == 5 and target.last["duplicates"] > 0
    assert (r < 99).all()  # the old generation's lines (99 spikes) never count
    np.testing.assert_allclose(r, inbox_means(tmp_path, 1, 5)[:, 0])
    # a stale request id on a line also does not count
    box = tmp_path / "inbox" / "gen_000002.jsonl"
    box.write_text('{"generation": 2, "request_id": "feedfeedfeedfeed", "index": 0, "repeat": 0, "counts": [50]}\n')
    r2 = RigTarget(tmp_path, timeout_s=0.2)
    r2.load_state_dict({"generation": 2})
    out = r2.evaluate(images(1, seed=2))
    assert np.isnan(out).all() and r2.last["other_generation"] == 1


def test_resume_reuses_an_answered_generation_and_presents_nothing_twice(tmp_path):
    sim = LabSim(tmp_path, weights="random", input_size=16)
    th = lab_in_thread(sim, n_generations=1)
    first = RigTarget(tmp_path, timeout_s=20, poll_s=0.01)
    state = first.state_dict()
    r = first.evaluate(images(4))
    th.join(5)
    manifest = tmp_path / "outbox" / "gen_000000" / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    # killed before the engine committed generation 0: a new process restores the old state
    again = RigTarget(tmp_path, timeout_s=5, poll_s=0.01)
    again.load_state_dict(state)
    t0 = time.monotonic()
    r_again = again.evaluate(images(4))
    assert time.monotonic() - t0 < 1.0  # answered already: no waiting
    np.testing.assert_allclose(r_again, r)
    assert manifest.stat().st_mtime_ns == stamp and again.last["published"] is False
    assert len(sim.pending()) == 0 and len((tmp_path / "sim_presented.jsonl").read_text().splitlines()) == 1
    # different images for that generation: the old request is archived, the new one published
    other = RigTarget(tmp_path, timeout_s=0.2, poll_s=0.01)
    other.load_state_dict(state)
    other.evaluate(images(4, seed=9))
    assert other.last["published"] and len(list((tmp_path / "outbox" / "stale").iterdir())) == 1
    assert len(list((tmp_path / "inbox" / "stale").iterdir())) == 1
    # represent=true: asked to present again
    forced = RigTarget(tmp_path, timeout_s=0.2, represent=True)
    forced.load_state_dict(state)
    forced.evaluate(images(4, seed=9))
    assert forced.last["published"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rig_dir": None}, "rig_dir"),
        ({"timeout_s": float("inf")}, "timeout_s"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"presentations": 0}, "presentations"),
        ({"image_format": "tiff"}, "image_format"),
        ({"n_channels": 2, "channels": [2]}, "channels"),
    ],
)
def test_bad_rig_options_fail_with_one_line(tmp_path, kwargs, message):
    opts = {"rig_dir": tmp_path, **kwargs}
    with pytest.raises(StimoptError, match=message):
        RigTarget(**opts)


def test_npy_image_format_round_trip(tmp_path):
    sim = LabSim(tmp_path, weights="random", input_size=16)
    th = lab_in_thread(sim)
    target = RigTarget(tmp_path, timeout_s=20, image_format="npy", poll_s=0.01)
    imgs = images(3)
    r = target.evaluate(imgs)
    th.join(5)
    stored = np.load(tmp_path / "outbox" / "gen_000000" / "images.npy")
    assert stored.shape == (3, 16, 16, 3) and stored.dtype == np.uint8
    assert np.abs(stored.astype(float) / 255 - imgs.permute(0, 2, 3, 1).numpy()).max() <= 0.5 / 255 + 1e-6
    assert np.isfinite(r).all()


def test_simulated_crash_mid_line_is_a_truncated_file(tmp_path):
    sim = LabSim(tmp_path, weights="random", input_size=16, truncate={0})
    th = lab_in_thread(sim)
    target = RigTarget(tmp_path, timeout_s=1.0, poll_s=0.01)
    r = target.evaluate(images(4))
    th.join(5)
    assert target.last["truncated"] == 1 and target.last["timed_out"] and not target.last["done_line"]
    assert np.isfinite(r[:3]).all() and np.isnan(r[3])  # the cut trial (the last image) is missing


def test_experiment_preset_records_missing_trials_and_goes_on(compose):
    cfg = compose(["experiment=rig", "target.rig_dir=somewhere"])
    assert cfg.target._target_ == "stimopt_plugins.rig.RigTarget" and cfg.on_bad_response == "skip"
    assert compose(["target=rig"]).on_bad_response == "stop"  # plain target=rig keeps the global default


def _psychopy_client():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "clients" / "psychopy_client.py"
    spec = importlib.util.spec_from_file_location("psychopy_client", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_psychopy_client_protocol_with_a_fake_window(tmp_path):
    """examples/clients/psychopy_client.py without PsychoPy: its protocol part with a fake display
    (PsychoPyDisplay itself, the window and the flips, is not tested here)."""
    client = _psychopy_client()

    class FakeDisplay:
        shown = []

        def show(self, image):
            self.shown.append(image.name)

    def recorder(index, repeat):
        return None if (index, repeat) == (1, 0) else [float(10 * index + repeat)]  # one failed trial

    display = FakeDisplay()
    t = threading.Thread(target=client.serve, args=(tmp_path, display, recorder, 10.0, 0.01, 1), daemon=True)
    t.start()
    target = RigTarget(tmp_path, timeout_s=10, presentations=2, poll_s=0.01)
    r = target.evaluate(images(3))
    t.join(5)
    np.testing.assert_allclose(r, [0.5, 11.0, 20.5])  # index 1: its one valid trial
    assert display.shown == ["img_0000.png", "img_0001.png", "img_0002.png"] * 2
    assert target.last["trials"] == 5 and target.last["done_line"] and not target.last["timed_out"]
    assert client.pending(tmp_path, client.read_presented(tmp_path)) == []  # not presented again on restart
    assert json.loads(client.trial_line(0, 1, 2, {"spikes": [[0.1, 0.15]]})) == {"generation": 0, "index": 1, "repeat": 2, "spikes": [[0.1, 0.15]]}


def test_spike_times_counted_in_the_window_with_a_baseline(tmp_path):
    """stimopt-rig/2: lines with spike times; the response is the count in target.window, the
    baseline-window count is recorded per trial and per image in log.jsonl."""
    sim = LabSim(tmp_path, weights="random", input_size=16, spikes=True, drop=0.2, seed=5)
    th = lab_in_thread(sim)
    target = RigTarget(tmp_path, timeout_s=20, presentations=2, poll_s=0.01, window=[0.05, 0.2], baseline_window=[-0.1, 0.0])
    r = target.evaluate(images(5))
    th.join(5)
    manifest = json.loads((tmp_path / "outbox" / "gen_000000" / "manifest.json").read_text())
    assert manifest["protocol"] == "stimopt-rig/2" and manifest["window"] == [0.05, 0.2]
    lines = [json.loads(x) for x in (tmp_path / "inbox" / "gen_000000.jsonl").read_text().splitlines()][:-1]
    win, base = np.zeros(5), np.zeros(5)
    n = np.zeros(5)
    for rec in lines:  # computed here from the spike times
        t = np.asarray(rec["spikes"][0])
        win[rec["index"]] += ((t >= 0.05) & (t < 0.2)).sum()
        base[rec["index"]] += ((t >= -0.1) & (t < 0.0)).sum()
        n[rec["index"]] += 1
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(r, win / np.where(n > 0, n, np.nan))
    entry = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    got_base = np.array([np.nan if b[0] is None else b[0] for b in entry["baseline"]])
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(got_base, base / np.where(n > 0, n, np.nan))
    assert len(entry["spike_trials"]) == len(lines) and entry["baseline_window"] == [-0.1, 0.0]
    assert {"index", "repeat", "window", "baseline"} <= set(entry["spike_trials"][0])


def test_count_only_clients_keep_working_with_a_window(tmp_path):
    sim = LabSim(tmp_path, weights="random", input_size=16)  # a stimopt-rig/1 lab: counts, no spike times
    th = lab_in_thread(sim)
    target = RigTarget(tmp_path, timeout_s=20, poll_s=0.01, window=[0.05, 0.2])
    r = target.evaluate(images(3))
    th.join(5)
    np.testing.assert_allclose(r, inbox_means(tmp_path, 0, 3)[:, 0])


def test_spike_times_without_a_window_are_rejected_not_guessed(tmp_path):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "gen_000000.jsonl").write_text(
        '{"generation": 0, "index": 0, "spikes": [[0.1]]}\n{"generation": 0, "index": 1, "count": 3}\n{"generation": 0, "done": true}\n')
    target = RigTarget(tmp_path, timeout_s=2, poll_s=0.01)
    r = target.evaluate(images(2))
    assert np.isnan(r[0]) and r[1] == 3 and target.last["malformed"] == 1
    assert "no target.window" in (tmp_path / "rejected.jsonl").read_text()


@pytest.mark.parametrize("kw", [{"window": [0.2, 0.05]}, {"window": "soon"}, {"window": [0, float("inf")]},
                                {"baseline_window": [-0.1, 0]}, {"window": [0, 1], "baseline_window": [1]}])
def test_bad_windows_are_one_line_errors(tmp_path, kw):
    with pytest.raises(StimoptError, match="window"):
        RigTarget(tmp_path, **kw)


def test_sim_drops_reorders_and_stale_lines_are_recorded_as_documented(tmp_path):
    sim = LabSim(tmp_path, weights="random", input_size=16, drop=0.3, reorder=True, old_lines={1}, seed=11)
    th = lab_in_thread(sim, n_generations=2)
    target = RigTarget(tmp_path, timeout_s=20, presentations=3, poll_s=0.01)
    x = images(10)
    r0, r1 = target.evaluate(x), target.evaluate(images(10, seed=1))
    th.join(5)
    lines = [json.loads(v) for v in (tmp_path / "inbox" / "gen_000001.jsonl").read_text().splitlines()]
    trials = [(v["index"], v["repeat"]) for v in lines if v["generation"] == 1 and "index" in v]
    assert trials != sorted(trials, key=lambda t: (t[1], t[0]))  # reordered
    assert len(trials) < 30  # dropped
    np.testing.assert_allclose(r0, inbox_means(tmp_path, 0, 10)[:, 0])
    np.testing.assert_allclose(r1, inbox_means(tmp_path, 1, 10)[:, 0])
    log = [json.loads(v) for v in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[1]["other_generation"] == 10 and log[0]["other_generation"] == 0
    assert log[1]["trials"] == len(trials) and log[1]["done_line"] and not log[1]["timed_out"]
    rejected = [json.loads(v) for v in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in rejected] == ["other_generation"] * 10 and all(e["generation"] == 1 for e in rejected)


def test_a_full_disk_while_writing_the_outbox_is_one_clear_line(tmp_path, monkeypatch):
    import errno

    import stimopt_plugins.rig.target as rig_target

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = RigTarget(tmp_path, timeout_s=1, poll_s=0.01)
    monkeypatch.setattr(rig_target, "write_images", full)
    with pytest.raises(StimoptError, match="cannot publish generation 0.*No space left on device.*resume") as exc:
        target.evaluate(images(2))
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "outbox" / "gen_000000").exists() and target.state_dict() == {"generation": 0}
    monkeypatch.undo()  # space again: the same generation is published, nothing half-written is shown
    th = lab_in_thread(LabSim(tmp_path, weights="random", input_size=16))
    r = target.evaluate(images(2))
    th.join(5)
    assert np.isfinite(r).all() and target.last["published"]
