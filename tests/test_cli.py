"""End-to-end: the `stimopt` command, its run directory, sweeps, W&B files, errors, kill and resume."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, FAST, cli_env, run_cli


def only_run_dir(cwd: Path) -> Path:
    dirs = [p for p in (cwd / "outputs" / "runs").iterdir() if (p / "summary.json").exists()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_run_directory_contract(tmp_path):
    proc = run_cli([*FAST, "budget=60", "direction=min", "seed=1"], tmp_path)
    assert "best response" in proc.stdout
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("best_response", "n_evaluations", "direction", "target", "generator", "optimizer", "seed", "wall_s"):
        assert key in summary
    assert summary["n_evaluations"] == 60 and summary["direction"] == "min" and summary["seed"] == 1
    db = sqlite3.connect(run_dir / "evaluations.sqlite")
    rows = db.execute("SELECT generation, response, code FROM evaluations").fetchall()
    assert len(rows) == 60 and {r[0] for r in rows} == {0, 1, 2}
    assert summary["best_response"] == pytest.approx(min(r[1] for r in rows))
    assert (run_dir / "best.png").stat().st_size > 1000 and (run_dir / "trajectory.png").stat().st_size > 1000


BAD_INPUTS = [
    (["target.layer=nope"], "unknown layer 'nope' of resnet18; valid layers: conv1, bn1"),
    (["target.unit=999"], "unit 999 is out of range: layer 'layer2' of resnet18 has 128 channels"),
    (["budget=0"], "budget must be a positive number"),
    (["target.model=not_a_model"], "unknown model 'not_a_model'"),
    (["target.model=resnet50", "target.weights=pretrained"], "download https://download.pytorch.org/models/resnet50"),
    (["+target.colour=red"], "does not take option(s) colour"),
    (["optimizer=nevergrad", "optimizer.name=NoSuchOpt"], "unknown nevergrad optimizer 'NoSuchOpt'"),
    (["optimizer._target_=subprocess.Popen"], "optimizer._target_ must name a stimopt.Optimizer subclass"),
    (["direction=up"], "direction must be 'max' or 'min'"),
]


@pytest.mark.parametrize("overrides,message", BAD_INPUTS)
def test_bad_inputs_raise_one_line_errors(tmp_path, compose, overrides, message):
    from stimopt.errors import StimoptError
    from stimopt.experiment import build_run

    cfg = compose([*FAST, *overrides])
    with pytest.raises(StimoptError) as err:
        build_run(cfg, tmp_path / "run")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_prints_bad_input_as_one_line_without_traceback(tmp_path):
    proc = run_cli([*FAST, "target.unit=999"], tmp_path, check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("stimopt: error:")]
    assert len(errors) == 1 and "unit 999 is out of range" in errors[0]
    assert "Traceback" not in proc.stderr


def _one_error_line(proc) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "warning:" not in line]
    assert len(lines) == 1 and lines[0].startswith("stimopt: error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize("args,message", [
    (["optimizer=nope"], "unknown optimizer 'nope' (optimizer=nope); available optimizer options: "),
    (["-m", "optimizer=ga,nope"], "unknown optimizer 'nope'"),
    (["target=nope"], "unknown target 'nope' (target=nope); available target options: "),
])
def test_unknown_group_option_is_one_line_listing_the_options(tmp_path, args, message):
    line = _one_error_line(run_cli([*FAST, *args], tmp_path, check=False))
    assert message in line
    group = args[-1].split("=")[0]
    from stimopt import plugins

    assert line.endswith(", ".join(plugins.group_options(group)))


def test_a_plugin_left_out_by_stimopt_load_plugins_is_one_line(tmp_path):
    env = cli_env(STIMOPT_LOAD_PLUGINS="core,cnn")
    line = _one_error_line(run_cli(["optimizer=cmaes"], tmp_path, check=False, env=env))
    assert "unknown optimizer 'cmaes'" in line and "available optimizer options: (none)" in line
    assert "STIMOPT_LOAD_PLUGINS=core,cnn loads only these plugins" in line
    env = cli_env(STIMOPT_LOAD_PLUGINS="core,cnn,image_codes,random_search")
    line = _one_error_line(run_cli(["optimizer=cmaes"], tmp_path, check=False, env=env))
    assert "available optimizer options: random;" in line
    line = _one_error_line(run_cli([], tmp_path, check=False, env=env))  # the default optimizer is not loaded
    assert "the default optimizer 'cmaes' is not available" in line and "pick one with optimizer=NAME" in line
    line = _one_error_line(run_cli([], tmp_path, check=False, env=cli_env(STIMOPT_LOAD_PLUGINS="nosuch,core")))
    assert "STIMOPT_LOAD_PLUGINS names unknown plugin(s) nosuch; installed plugins: " in line and "cnn" in line


def test_help_introduces_stimopt_and_lists_only_its_groups(tmp_path):
    text = run_cli(["--help"], tmp_path).stdout
    assert text.startswith("stimopt: find the images a visual neuron prefers") and "Hydra" not in text.split("\n")[0]
    assert "powered by Hydra" not in text
    assert _listed_groups(text) == {"target", "generator", "optimizer", "objective", "noise", "logger", "experiment"}
    assert "cmaes" in text and "edge_neuron" in text and "gabor" in text  # options of every installed plugin
    fit = run_cli(["--help"], tmp_path, program="stimopt-fit").stdout
    assert fit.startswith("stimopt-fit: fit a model") and "powered by Hydra" not in fit
    assert _listed_groups(fit) == {"model"} and "v4_ensemble" in fit


def _listed_groups(text: str) -> set[str]:
    block = text.split("Config group")[1].split("\n\n")[0].splitlines()[1:]
    return {line.split(":")[0].strip() for line in block}


def test_sweep_writes_one_table_and_one_plot(tmp_path):
    proc = run_cli(["-m", "optimizer=random,cmaes", "seed=0,1", "budget=40", *FAST], tmp_path)
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    table = (sweep / "sweep_summary.md").read_text()
    assert table.count("| finished |") == 4 and "optimizer=cmaes seed=1" in table
    assert (sweep / "sweep.png").stat().st_size > 1000
    assert "sweep table and plot" in proc.stdout


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", "budget=40", *FAST], tmp_path)
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in range(2)]
    assert [s["seed"] for s in summaries] == [0, 1] and all(s["n_evaluations"] == 40 for s in summaries)


def test_wandb_offline_files(tmp_path):
    args = [a for a in FAST if a != "logger=none"] + ["budget=40", "logger=wandb"]
    run_cli(args, tmp_path)
    run_dir = only_run_dir(tmp_path)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))


def test_same_seed_same_result_across_processes(tmp_path):
    a = run_cli([*FAST, "budget=40", "seed=5", "hydra.run.dir=a"], tmp_path)
    b = run_cli([*FAST, "budget=40", "seed=5", "hydra.run.dir=b"], tmp_path)
    ra = json.loads((tmp_path / "a" / "summary.json").read_text())["best_response"]
    rb = json.loads((tmp_path / "b" / "summary.json").read_text())["best_response"]
    assert ra == rb and a.returncode == b.returncode == 0


def _responses(db: Path) -> np.ndarray:
    rows = sqlite3.connect(db).execute("SELECT response FROM evaluations ORDER BY id").fetchall()
    return np.array([r[0] for r in rows])


def test_kill_9_mid_run_then_resume_equals_uninterrupted(tmp_path):
    args = [*FAST, "budget=400", "batch_size=10", "seed=2"]
    run_cli([*args, "hydra.run.dir=full"], tmp_path)
    proc = subprocess.Popen([str(BIN / "stimopt"), *args, "hydra.run.dir=killed"], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "killed" / "evaluations.sqlite"
    deadline = time.time() + 120
    while time.time() < deadline:
        if db.exists():
            try:
                if len(_responses(db)) >= 100:
                    break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = _responses(db)
    assert 100 <= len(committed) < 400, "the run should have been killed mid-way"
    assert len(committed) % 10 == 0, "only whole generations are committed"
    # a changed config is refused, naming the difference
    bad = run_cli([*args, "seed=3", "hydra.run.dir=killed", "resume=true"], tmp_path, check=False)
    assert bad.returncode == 2 and "seed: 2 -> 3" in bad.stderr
    run_cli([*args, "hydra.run.dir=killed", "resume=true"], tmp_path)
    full, resumed = _responses(tmp_path / "full" / "evaluations.sqlite"), _responses(db)
    np.testing.assert_array_equal(resumed[: len(committed)], committed)  # nothing committed was lost
    np.testing.assert_array_equal(resumed, full)  # and it ends as the uninterrupted run did
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["n_evaluations"] == 400


def test_rerunning_into_a_finished_run_dir_without_resume_is_refused(tmp_path):
    run_cli([*FAST, "budget=20", "hydra.run.dir=r"], tmp_path)
    proc = run_cli([*FAST, "budget=20", "hydra.run.dir=r"], tmp_path, check=False)
    assert proc.returncode == 2 and "already holds a run; pass resume=true" in proc.stderr
