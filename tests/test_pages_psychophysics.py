"""stimopt-psychophysics: the two-choice experiment is clicked through to the end in headless
Chromium (from disk and through the collection server) and its result file is analysed."""
from __future__ import annotations

import json
import sqlite3
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, run_cli
from pages_browser import browser, images_loaded, open_page, screenshot, wait_for  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def screening(tmp_path_factory) -> Path:
    """A two-tail screening file: 150 images whose 'neuron' responds to brightness."""
    rng = np.random.default_rng(0)
    images = rng.random((150, 16, 16, 3)).astype(np.float32) * np.linspace(0.1, 1, 150)[:, None, None, None]
    responses = images.mean(axis=(1, 2, 3)) - 0.3 + rng.normal(0, 0.01, 150)
    path = tmp_path_factory.mktemp("psy") / "screen.npz"
    np.savez(path, images=images, responses=responses)
    return path


@pytest.fixture(scope="module")
def experiment(screening) -> Path:
    out = screening.parent / "experiment"
    proc = run_cli(["build", str(screening), "--out", str(out)], screening.parent, program="stimopt-psychophysics")
    assert proc.stdout.strip().endswith("index.html")
    return out


def test_design_draws_100_pairs_in_5_bins_from_the_middle_band(experiment, screening):
    plan = json.loads((experiment / "experiment.json").read_text())
    responses = np.load(screening)["responses"]
    assert len(plan["preferred"]) == 18 and len(plan["anti"]) == 18 and len(plan["trials"]) == 100
    assert {p["id"] for p in plan["preferred"]} == set(np.argsort(-responses)[:18].tolist())
    assert {p["id"] for p in plan["anti"]} == set(np.argsort(responses)[:18].tolist())
    lo, hi = np.percentile(responses, [20, 80])
    bins = [t["bin"] for t in plan["trials"]]
    assert sorted(set(bins)) == [1, 2, 3, 4, 5] and all(bins.count(b) == 20 for b in range(1, 6))
    diffs = {b: [] for b in range(1, 6)}
    for t in plan["trials"]:
        for side in ("left", "right"):
            assert lo <= t[side]["response"] <= hi and t[side]["response"] == pytest.approx(responses[t[side]["id"]])
        diffs[t["bin"]].append(abs(t["left"]["response"] - t["right"]["response"]))
    assert np.median(diffs[1]) < np.median(diffs[3]) < np.median(diffs[5])  # bin 1: the hardest pairs


def click_through(driver, first: int = 0, n_trials: int = 100) -> dict:
    for i in range(first, n_trials):
        wait_for(lambda: driver.find_element("id", "trial-number").text == str(i + 1)
                 and all(x["ok"] for x in images_loaded(driver, "#trials img")), timeout=20, message=f"trial {i + 1}")
        driver.find_element("id", "left" if i % 3 else "right").click()
    wait_for(lambda: driver.find_element("id", "done").is_displayed(), message="the end screen")
    return driver.execute_script("return window.stimoptResults;")


def test_experiment_clicked_through_from_disk_and_analysed(browser, experiment, tmp_path):
    open_page(browser, experiment / "index.html")
    browser.get(browser.current_url + "?participant=p1&feedback_ms=120")
    browser.find_element("id", "start").click()
    wait_for(lambda: (prior := images_loaded(browser, "#prior img")) and len(prior) == 36 and all(p["ok"] for p in prior),
             message="the 36 prior images")
    assert "Preferred" in browser.find_element("id", "prior").text and "Anti-preferred" in browser.find_element("id", "prior").text
    screenshot(browser, "reports_psychophysics_prior")
    browser.find_element("id", "continue").click()
    wait_for(lambda: all(x["ok"] for x in images_loaded(browser, "#trials img")), message="the first pair")
    screenshot(browser, "reports_psychophysics_trial")
    browser.execute_script(  # record the frames the participant sees, however briefly
        "window.frames_seen = []; new MutationObserver(function (ms) { ms.forEach(function (m) {"
        " if (m.target.classList.contains('correct') || m.target.classList.contains('wrong'))"
        " { window.frames_seen.push(m.target.id + ':' + m.target.className); } }); })"
        ".observe(document.getElementById('trials'), {subtree: true, attributes: true, attributeFilter: ['class']});")
    browser.find_element("id", "left").click()  # feedback: the better image framed green, a wrong pick red
    first = wait_for(lambda: browser.execute_script("return window.stimoptResults.trials[0];"), message="trial 1 recorded")
    better = "left" if first["left_response"] >= first["right_response"] else "right"
    seen = wait_for(lambda: browser.execute_script("return window.frames_seen;"), message="the feedback frames")
    assert f"{better}:choice correct" in seen
    assert ("left:choice wrong" in seen) == (not first["correct"])
    result = click_through(browser, first=1)
    trials = result["trials"]
    assert len(trials) == 100
    assert result["participant"] == "p1" and result["condition"] == "both"
    for t in trials:
        better = "left" if t["left_response"] >= t["right_response"] else "right"
        assert t["correct"] == (t["choice"] == better) and t["rt_ms"] >= 0
    n_correct = sum(t["correct"] for t in trials)
    assert browser.find_element("id", "final-correct").text == str(n_correct)
    browser.find_element("id", "download").click()
    assert browser.find_element("id", "download-link").get_attribute("download") == "psychophysics-p1-both.json"
    screenshot(browser, "reports_psychophysics_done")

    (tmp_path / "p1.json").write_text(json.dumps(result))
    proc = run_cli(["analyze", str(tmp_path / "p1.json"), "--figure", str(tmp_path / "fig.png")], tmp_path,
                   program="stimopt-psychophysics")
    overall = next(line for line in proc.stdout.splitlines() if line.startswith("both") and " all " in line)
    assert f"{n_correct}/100" in overall.replace(" ", "")
    assert proc.stdout.count("\nboth ") == 6 and (tmp_path / "fig.png").stat().st_size > 1000


def test_collection_server_saves_the_result_file(browser, experiment, tmp_path):
    from stimopt.psychophysics_serve import make_server

    server = make_server(experiment, 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        assert server.server_address[0] == "127.0.0.1"
        open_page(browser, f"http://127.0.0.1:{server.server_address[1]}/index.html?condition=none&feedback_ms=0&participant=p2")
        browser.find_element("id", "start").click()
        assert not browser.find_element("id", "prior").is_displayed()  # condition none: no prior images
        click_through(browser)
        saved = wait_for(lambda: browser.execute_script("return window.stimoptPosted;"), message="the posted result")
        posted = browser.execute_script("return window.stimoptResults;")
        with pytest.raises(urllib.error.HTTPError):  # other participants' files are not listed
            urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/results/", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    result = json.loads((experiment / saved).read_text())
    assert result["trials"] == posted["trials"]
    assert result["condition"] == "none" and result["participant"] == "p2" and len(result["trials"]) == 100


def test_build_from_a_finished_run(tmp_path):
    run_cli([*FAST, "optimizer=random", "budget=100", "hydra.run.dir=run"], tmp_path)
    proc = run_cli(["build", "run", "--out", "psy", "--condition", "anti"], tmp_path, program="stimopt-psychophysics")
    plan = json.loads((tmp_path / "psy" / "experiment.json").read_text())
    stored = [r for (r,) in sqlite3.connect(tmp_path / "run" / "evaluations.sqlite").execute(
        "SELECT response FROM evaluations ORDER BY id")]
    assert plan["condition"] == "anti" and len(plan["trials"]) == 100 and proc.returncode == 0
    assert all(t["left"]["response"] == pytest.approx(stored[t["left"]["id"]]) for t in plan["trials"])
    assert len(list((tmp_path / "psy" / "images").glob("*.png"))) >= 36 + 15


@pytest.mark.parametrize("case", ["too_few", "not_a_source", "bad_condition", "analyze_junk"])
def test_bad_input_is_one_line(tmp_path, screening, case):
    if case == "too_few":
        data = np.load(screening)
        np.savez(tmp_path / "small.npz", images=data["images"][:50], responses=data["responses"][:50])
        args, message = ["build", str(tmp_path / "small.npz"), "--out", str(tmp_path / "o")], "too few for 18 + 18 prior images and 100 trials"
    elif case == "not_a_source":
        args, message = ["build", str(tmp_path), "--out", str(tmp_path / "o")], "neither a run directory"
    elif case == "bad_condition":
        args, message = ["build", str(screening), "--out", str(tmp_path / "o"), "--condition", "some"], "--condition must be one of"
    else:
        (tmp_path / "junk.json").write_text('{"a": 1}')
        args, message = ["analyze", str(tmp_path / "junk.json")], "is not a psychophysics result file"
    proc = run_cli(args, tmp_path, program="stimopt-psychophysics", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr


def test_run_responses_leave_out_reference_images(tmp_path):
    """A rig run's interleaved reference images are not the run's stimuli: the experiment is built from the latter."""
    from stimopt.psychophysics import run_responses
    from stimopt.store import RunStore

    store = RunStore(tmp_path / "evaluations.sqlite")
    ref = {"kind": "reference", "code": None, "response": 9.0, "score": 9.0, "outputs": None, "info": {"ref": 0}}
    store.append_generation(0, np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.0, 2.0]), np.array([1.0, 2.0]),
                            None, None, n_evaluations=2, wall_s=0.1, checkpoint={}, extras=[ref])
    store.close()
    codes, responses, _ = run_responses(tmp_path)
    assert len(codes) == 2 and list(responses) == [1.0, 2.0]
