"""report.html and sweep.html, looked at in headless Chromium: images load, the numbers are
summary.json's, the sweep table sorts; stimopt-report rebuilds the page of a killed run."""
from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from conftest import FAST, run_cli
from pages_browser import browser, images_loaded, open_page, screenshot  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("pages")
    run_cli([*FAST, "optimizer=random", "budget=40", "direction=min", "seed=3", "hydra.run.dir=run"], cwd)
    return cwd / "run"


def page_numbers(driver) -> dict:
    return driver.execute_script(
        "var o = {}; document.querySelectorAll('#summary [data-key]').forEach(function (e) {"
        " o[e.getAttribute('data-key')] = e.textContent.trim(); }); return o;"
    )


def assert_same(shown: str, value) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        assert float(shown) == pytest.approx(value, rel=1e-5), (shown, value)
    else:
        assert shown == str(value)


def test_every_run_directory_gets_its_page_and_images(finished_run):
    html = (finished_run / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # opens from disk, reaches nothing
    names = sorted(p.name for p in (finished_run / "report_files").glob("*.png"))
    assert names[0] == "best_00.png" and "worst_00.png" in names and len(names) == 24


def test_run_page_shows_what_summary_json_says(browser, finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    open_page(browser, finished_run / "report.html")
    shown = page_numbers(browser)
    for key in ("status", "target_name", "generator_name", "optimizer_name", "direction", "budget", "seed",
                "best_response", "n_evaluations", "evaluations_to_best", "n_missing", "wall_s", "generate_s", "evaluate_s"):
        assert key in shown, key
        assert_same(shown[key], summary[key])
    imgs = images_loaded(browser)
    assert imgs and all(i["ok"] for i in imgs), [i for i in imgs if not i["ok"]]
    assert len(images_loaded(browser, "#best img")) == 12 and len(images_loaded(browser, "#worst img")) == 12
    assert images_loaded(browser, "#trajectory")[0]["ok"]
    responses = browser.execute_script(
        "return Array.from(document.querySelectorAll('#best .response')).map(e => parseFloat(e.dataset.value));")
    assert responses[0] == pytest.approx(summary["best_response"]) and responses == sorted(responses)  # direction=min
    worst = browser.execute_script("return parseFloat(document.querySelector('#worst .response').dataset.value);")
    stored = [r for (r,) in sqlite3.connect(finished_run / "evaluations.sqlite").execute("SELECT response FROM evaluations")]
    assert worst == pytest.approx(max(stored)) and responses[0] == pytest.approx(min(stored))
    assert "generator:" in browser.find_element("id", "config").text
    links = browser.execute_script("return Array.from(document.querySelectorAll('#files a')).map(a => a.getAttribute('href'));")
    assert "summary.json" in links and "evaluations.sqlite" in links
    assert all((finished_run / href).exists() for href in links)
    screenshot(browser, "reports_run")


def test_stimopt_report_rebuilds_the_page_of_a_killed_run(browser, finished_run, tmp_path):
    killed = tmp_path / "killed"
    shutil.copytree(finished_run, killed)
    for name in ("summary.json", "report.html", "best.png", "trajectory.png"):
        (killed / name).unlink()
    shutil.rmtree(killed / "report_files")
    db = sqlite3.connect(killed / "evaluations.sqlite")
    db.execute("UPDATE meta SET value='\"running\"' WHERE key='status'")  # as a kill -9 leaves it
    db.commit()
    db.close()
    proc = run_cli([str(killed)], tmp_path, program="stimopt-report")
    assert proc.stdout.strip().endswith("report.html")
    open_page(browser, killed / "report.html")
    assert "no summary.json" in browser.find_element("tag name", "body").text
    shown = page_numbers(browser)
    assert shown["n_evaluations"] == "40" and shown["status"] == "running"
    summary = json.loads((finished_run / "summary.json").read_text())
    assert_same(shown["best_response"], summary["best_response"])
    assert_same(shown["evaluations_to_best"], summary["evaluations_to_best"])
    imgs = images_loaded(browser, "#best img, #worst img, #trajectory")
    assert len(imgs) == 25 and all(i["ok"] for i in imgs)  # rendered by the generator rebuilt from the config


def test_resume_refreshes_the_page(tmp_path):
    run_cli([*FAST, "optimizer=random", "budget=20", "hydra.run.dir=run"], tmp_path)
    first = (tmp_path / "run" / "report.html").read_text()
    assert re.search(r'data-key="n_evaluations">20<', first)
    run_cli([*FAST, "optimizer=random", "budget=40", "hydra.run.dir=run", "resume=true"], tmp_path)
    again = (tmp_path / "run" / "report.html").read_text()
    assert re.search(r'data-key="n_evaluations">40<', again) and "no summary.json" not in again


@pytest.mark.parametrize("make", ["empty", "missing", "file"])
def test_stimopt_report_refuses_what_is_not_a_run_in_one_line(tmp_path, make):
    target = tmp_path / "thing"
    if make == "empty":
        target.mkdir()
    elif make == "file":
        target.write_text("x")
    proc = run_cli([str(target)], tmp_path, program="stimopt-report", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stimopt-report: error:") and "neither a run directory" in lines[0]
    assert "Traceback" not in proc.stderr


def test_sweep_page_sorts_and_shows_each_jobs_best(browser, tmp_path):
    run_cli(["-m", "optimizer=random,nevergrad", "seed=0,1", "budget=40", *FAST], tmp_path)
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    open_page(browser, sweep / "sweep.html")
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#jobs tbody tr')).map(tr => ({job: tr.dataset.job,"
        " best: tr.querySelector('[data-key=best_response]').textContent.trim(),"
        " to_best: tr.querySelector('[data-key=evaluations_to_best]').textContent.trim(),"
        " overrides: tr.cells[1].textContent.trim()}));")
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    for r in rows:
        summary = json.loads((sweep / r["job"] / "summary.json").read_text())
        assert_same(r["best"], summary["best_response"])
        assert_same(r["to_best"], summary["evaluations_to_best"])
    assert {r["overrides"] for r in rows} == {"optimizer=random seed=0", "optimizer=random seed=1",
                                              "optimizer=nevergrad seed=0", "optimizer=nevergrad seed=1"}
    imgs = images_loaded(browser)
    assert len(images_loaded(browser, "#best-images img")) == 4 and all(i["ok"] for i in imgs), imgs
    assert images_loaded(browser, "#curves")[0]["ok"]

    def column():
        return browser.execute_script(
            "return Array.from(document.querySelectorAll('#jobs tbody [data-key=best_response]'))"
            ".map(td => parseFloat(td.dataset.sort));")

    header = browser.find_element("xpath", "//table[@id='jobs']//th[text()='best response']")
    header.click()
    assert column() == sorted(column()) and header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert column() == sorted(column(), reverse=True) and header.get_attribute("aria-sort") == "descending"
    screenshot(browser, "reports_sweep")
    assert browser.execute_script("return document.querySelector('#jobs a').getAttribute('href');") in (
        "0/report.html", "1/report.html", "2/report.html", "3/report.html")


def test_bank_index_lists_of_the_optimizer_report_become_image_strips():
    from stimopt.html_report import N_STRIP, _bank_lists

    walk = {"walk": {"steps": 3}, "L": 5, "best_index": 7, "tuning_path": [3, 9, 7]}
    surrogate = {"heldout_r2": 0.4, "predicted_top_unshown": [{"index": i, "predicted_score": 1.0} for i in range(40)]}
    assert _bank_lists(walk, is_bank=True) == {"tuning_path": [3, 9, 7]}
    assert _bank_lists(surrogate, is_bank=True) == {"predicted_top_unshown": list(range(N_STRIP))}
    assert _bank_lists(walk, is_bank=False) == {} and _bank_lists(None, is_bank=True) == {}


def test_stimopt_report_rebuilds_a_sweep_page_and_its_jobs_pages(tmp_path):
    run_cli(["-m", "optimizer=random", "seed=0,1", "budget=20", *FAST], tmp_path)
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    (sweep / "sweep.html").unlink()
    (sweep / "1" / "report.html").unlink()
    (sweep / "1" / "summary.json").unlink()  # job 1 as if killed before its end
    proc = run_cli([str(sweep)], tmp_path, program="stimopt-report")
    assert proc.stdout.strip().endswith("sweep.html")
    html = (sweep / "sweep.html").read_text()
    assert "1/report.html" in html and "1/report_files/best_00.png" in html and "stopped (" in html
    assert "no summary.json" in (sweep / "1" / "report.html").read_text()
