"""Bad input is one line: each of these once gave a traceback (or silently did the wrong thing).

Every case runs the real console script and asserts: exit code 2, exactly one ``PROGRAM: error:``
line that names the key (or file) and the fix, and no "Traceback" on stderr. Checks that can run
at composition run there, before anything is built or evaluated.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, cli_env, run_cli

TINY_FIT = ["model.backbone=resnet18", "model.weights=random", "model.layer=layer2", "model.input_size=32", "data.size=32",
            "device=cpu"]


def assert_one_line(proc, program: str, *needles: str) -> str:
    out = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, out
    assert "Traceback" not in proc.stderr, out
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{program}: error:")]
    assert len(errors) == 1, out
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


# -- files a lab may pass by mistake --------------------------------------------------------------
@pytest.fixture(scope="module")
def junk(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("junk")
    files = {"random": folder / "random.pt", "text": folder / "text.pt", "file": folder / "a_file"}
    files["random"].write_bytes(np.random.default_rng(0).bytes(4096))
    files["text"].write_text("these are not weights\n")
    files["file"].write_text("a file where a folder goes\n")
    return files


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Path:
    from stimopt.bank import FeatureSpec, build_bank

    out = tmp_path_factory.mktemp("bank") / "b"
    build_bank("demo:120", out, features=FeatureSpec(model="pixels", input_size=8), k=6, image_size=24, shard_size=60)
    return out


def damaged_bank(bank: Path, where: Path, how: str) -> Path:
    shutil.copytree(bank, where)
    if how == "manifest":
        (where / "manifest.json").write_text('{"version": 1, "size": ')
    elif how == "features_missing":
        (where / "features.npy").unlink()
    elif how == "features_truncated":
        data = (where / "features.npy").read_bytes()
        (where / "features.npy").write_bytes(data[: len(data) // 2])
    elif how == "graph_out_of_range":
        graph = np.load(where / "graph.npy")
        graph[5, 1] = 10**6
        np.save(where / "graph.npy", graph)
    elif how == "coresets_negative":
        cores = np.load(where / "coresets.npy")
        cores[0, 0] = -3
        np.save(where / "coresets.npy", cores)
    return where


# -- stimopt: config values ----------------------------------------------------------------------
CONFIG_CASES = [
    (["budget=abc"], ["budget must be", "budget=2000"]),
    (["seed=abc"], ["seed must be a whole number", "seed=0"]),
    (["batch_size=abc"], ["batch_size must be", "batch_size=20"]),
    (["seed=1.5"], ["seed must be a whole number", "not a fraction"]),
    (["target.input_size=0"], ["target.input_size must be", "target.input_size=128"]),
    (["device=tpu"], ["device=tpu", "auto, cpu, cuda"]),
    (["objective.weights=[a,b,c]"], ["objective.weights must be a list of numbers", "objective.weights=[1,-1]"]),
    (["budget=${oops}"], ["budget:", "interpolation"]),
    (["seed=[1"], ["cannot read the override 'seed=[1'", "KEY=VALUE"]),
    (["store.synchronous=fast"], ["store.synchronous must be 'FULL' or 'NORMAL'"]),
    (["on_bad_response=ignore"], ["on_bad_response must be 'stop' or 'skip'"]),
    (["reference.kind=photos"], ["reference.kind must be"]),
]


@pytest.mark.parametrize("overrides,needles", CONFIG_CASES, ids=[c[0][0] for c in CONFIG_CASES])
def test_bad_config_value_is_one_line_before_anything_runs(tmp_path, overrides, needles):
    proc = run_cli([*FAST, "budget=20", *overrides], tmp_path, check=False)
    assert_one_line(proc, "stimopt", *needles)
    assert not list(tmp_path.glob("outputs/runs/*/evaluations.sqlite"))  # refused at composition: nothing evaluated


def test_schema_accepts_the_shipped_defaults_and_whole_floats(compose):
    from stimopt.schema import validate

    validate(compose([]))
    validate(compose(["budget=2e3", "seed=3.0", "resume=true", "store.synchronous=normal", "reference.kind=natural_crops"]))


# -- stimopt: files -------------------------------------------------------------------------------
FILE_CASES = {
    "weights_random_bytes": (lambda j, b, t: ["target.weights=" + str(j["random"])], ["random.pt", "state dict"]),
    "weights_text": (lambda j, b, t: ["target.weights=" + str(j["text"])], ["text.pt", "torch.save"]),
    "checkpoint_corrupt": (lambda j, b, t: ["target=v4_ensemble", "target.checkpoint=" + str(j["random"])], ["random.pt"]),
    "run_dir_is_a_file": (lambda j, b, t: ["hydra.run.dir=" + str(j["file"])], ["hydra.run.dir=", "is a file"]),
    **{f"bank_{how}": ((lambda how: lambda j, b, t: ["generator=imagebeagle", "optimizer=walk",
                                                     f"generator.bank={damaged_bank(b, t / 'bank', how)}"])(how),
                       [needle, "stimopt-bank build"])
       for how, needle in [("manifest", "manifest.json"), ("features_missing", "features.npy is missing"),
                           ("features_truncated", "features.npy is damaged or truncated"),
                           ("graph_out_of_range", "graph.npy holds image indices outside")]},
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_file_is_one_line(tmp_path, junk, bank, case):
    make, needles = FILE_CASES[case]
    overrides = make(junk, bank, tmp_path)
    fast = [o for o in FAST if not o.startswith("target.weights=")] if case.startswith("weights") else FAST
    if case == "checkpoint_corrupt":
        fast = ["logger=none", "generator.size=32"]
    proc = run_cli([*fast, "budget=20", *overrides], tmp_path, check=False)
    assert_one_line(proc, "stimopt", *needles)


def test_read_only_run_dir_is_one_line(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere chmod allows nothing; /sys refuses even root
        target = Path("/sys/stimopt-read-only-check")
        try:
            target.mkdir()
        except OSError:
            pass
        else:
            target.rmdir()
            pytest.skip("no folder here refuses root")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "run"
    proc = run_cli([*FAST, "budget=20", f"hydra.run.dir={target}"], tmp_path, check=False)
    assert_one_line(proc, "stimopt", "hydra.run.dir=", "cannot be written")


def test_resume_beside_a_corrupt_run_is_one_line(tmp_path):
    old = tmp_path / "outputs" / "runs" / "2020-01-01_00-00-00-000000"
    old.mkdir(parents=True)
    (old / "evaluations.sqlite").write_bytes(b"SQLite format 3\x00" + np.random.default_rng(1).bytes(3000))
    proc = run_cli([*FAST, "budget=20", "resume=true"], tmp_path, check=False)
    assert_one_line(proc, "stimopt", str(old.name))
    assert (old / "evaluations.sqlite").stat().st_size == 3016  # nothing recorded is touched


def test_a_bad_job_in_a_sweep_is_marked_and_the_table_still_written(tmp_path):
    proc = run_cli(["-m", *FAST, "budget=20", "seed=abc,0"], tmp_path)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("stimopt: error:")]
    assert len(errors) == 1 and "seed must be a whole number" in errors[0]
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    table = (sweep / "sweep_summary.md").read_text()
    assert "| error: seed must be a whole number" in table and "| finished |" in table
    assert (sweep / "0" / "error.txt").exists() and (sweep / "1" / "summary.json").exists()


# -- stimopt-bank ---------------------------------------------------------------------------------
def _bank_cmd(source, out, *extra) -> list[str]:
    return ["build", str(source), str(out), "--model", "pixels", "--input-size", "8", "--image-size", "24", *extra]


def test_bank_build_into_an_existing_file_is_one_line(tmp_path, junk):
    proc = run_cli(_bank_cmd("demo:60", junk["file"], "--k", "6"), tmp_path, program="stimopt-bank", check=False)
    assert_one_line(proc, "stimopt-bank", "a_file is a file", "new folder")


def test_bank_k_larger_than_the_bank_is_refused_before_any_feature(tmp_path):
    out = tmp_path / "small"
    proc = run_cli(_bank_cmd("demo:40", out, "--k", "500"), tmp_path, program="stimopt-bank", check=False)
    assert_one_line(proc, "stimopt-bank", "k=500", "--k 39")
    assert not (out / "shards" / "00000").exists() and "shard 1/" not in proc.stderr  # no feature was computed


@pytest.mark.parametrize("how", ["manifest", "features_missing", "features_truncated", "graph_out_of_range",
                                 "coresets_negative"])
def test_damaged_bank_is_one_line_naming_what_to_rebuild(tmp_path, bank, how):
    from stimopt.bank import load_bank
    from stimopt.errors import StimoptError

    damaged = damaged_bank(bank, tmp_path / "b", how)
    with pytest.raises(StimoptError) as err:
        load_bank(damaged)
    message = str(err.value)
    assert "\n" not in message and "stimopt-bank build" in message and str(damaged) in message


def test_bank_info_of_a_broken_manifest_is_one_line(tmp_path, bank):
    damaged = damaged_bank(bank, tmp_path / "b", "manifest")
    proc = run_cli(["info", str(damaged)], tmp_path, program="stimopt-bank", check=False)
    assert_one_line(proc, "stimopt-bank", "manifest.json cannot be read")


# -- stimopt-fit ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fit_data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fitdata")
    rng = np.random.default_rng(0)
    files = {"images20": folder / "img20.npy", "images0": folder / "img0.npy", "empty": folder / "resp0.npz",
             "nan": folder / "nan.npz", "nan_column": folder / "nan_column.npz", "good": folder / "good.npz"}
    np.save(files["images20"], (rng.random((20, 32, 32, 3)) * 255).astype(np.uint8))
    np.save(files["images0"], np.zeros((0, 32, 32, 3), np.uint8))
    np.savez(files["empty"], responses=np.zeros((0, 3)))
    np.savez(files["nan"], responses=np.full((20, 3), np.nan))
    np.savez(files["good"], responses=rng.random((20, 3)))
    column = rng.random((20, 3))
    column[:, 1] = np.nan
    np.savez(files["nan_column"], responses=column)
    return files


FIT_CASES = {
    "zero_images": (["data.images={images0}", "data.responses={empty}"], ["empty", "one row per image"]),
    "zero_image_array": (["data.images={images0}", "data.responses={good}"], ["0 images"]),
    "all_nan": (["data.images={images20}", "data.responses={nan}"], ["every response is NaN"]),
    "a_never_recorded_output": (["data.images={images20}", "data.responses={nan_column}"], ["n1", "all NaN"]),
    "fit_function_os_system": (["model._target_=os.system"], ["model._target_=os.system", "register_fit"]),
    "matcher_os_system": (["mode=match", "model.matcher=os.system"], ["model.matcher=os.system", "register_matcher"]),
    "twin_of_no_images": (["data.twin.n_images=0"], ["data.twin.n_images"]),
}


@pytest.mark.parametrize("case", list(FIT_CASES))
def test_bad_fit_input_is_one_line_and_writes_no_model(tmp_path, fit_data, case):
    overrides, needles = FIT_CASES[case]
    out = tmp_path / "fit"
    args = [*TINY_FIT, f"out={out}", *(o.format(**{k: str(v) for k, v in fit_data.items()}) for o in overrides)]
    proc = run_cli(args, tmp_path, program="stimopt-fit", check=False)
    assert_one_line(proc, "stimopt-fit", *needles)
    assert not (out / "model.pt").exists() and not (out / "report.json").exists()


def test_fit_into_an_existing_file_is_one_line(tmp_path, junk):
    proc = run_cli([*TINY_FIT, f"out={junk['file']}"], tmp_path, program="stimopt-fit", check=False)
    assert_one_line(proc, "stimopt-fit", "out=", "is a file")


def test_marked_fit_functions_are_the_only_ones_called(compose):
    from stimopt.errors import StimoptError
    from stimopt.fit import compose_fit, fit_function, register_fit

    assert fit_function(compose_fit(["model=encoder"])).__name__ == "fit_encoder"  # a plugin's own
    for target in ("os.system", "builtins.print", "stimopt.fit.run_fit", "subprocess.getoutput"):
        with pytest.raises(StimoptError, match="is not a stimopt fit function"):
            fit_function(compose_fit([f"model._target_={target}"]))

    @register_fit
    def mine(cfg, out_dir):
        return {}

    assert getattr(mine, "__stimopt_fit__") == "fit"


def test_a_refused_fit_function_is_refused_before_its_module_is_imported(compose):
    import sys

    from stimopt.errors import StimoptError
    from stimopt.fit import compose_fit, fit_function

    sys.modules.pop("this", None)  # the standard library's "this" prints the Zen of Python when imported
    for key, target in (("_target_", "this.s"), ("matcher", "this.d")):
        with pytest.raises(StimoptError, match="is not a stimopt"):
            fit_function(compose_fit([f"model.{key}={target}", *(["mode=match"] if key == "matcher" else [])]), key=key)
    assert "this" not in sys.modules


# -- W&B offline: no network at all ----------------------------------------------------------------
WANDB_CHILD = textwrap.dedent('''
    import os, socket, sys
    from pathlib import Path
    from omegaconf import OmegaConf

    if os.environ.get("STIMOPT_LOOKUP_LOG"):
        assert socket.getaddrinfo.__name__ == "refuse_lookup", "the lookup guard is not installed"
    from stimopt.observers import WandbLogger

    run_dir = Path(sys.argv[1])
    logger = WandbLogger(OmegaConf.create({"budget": 10, "seed": 0}), run_dir, mode="offline", log_images=False)
    logger.on_generation(None, {"generation": 0, "best": 1.0, "mean": 0.5})
    logger.on_end(None, {"best_response": 1.0, "status": "finished"})
    print("offline run written")
''')

GUARD = textwrap.dedent('''
    import os, socket

    _LOG = os.environ["STIMOPT_LOOKUP_LOG"]
    _LOCAL = {None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0", "::"}
    _real = socket.getaddrinfo

    def _record(host):
        with open(_LOG, "a") as f:
            f.write(f"{host}\\n")
        raise socket.gaierror(socket.EAI_NONAME, f"name lookups are forbidden in this test ({host})")

    def refuse_lookup(host, *args, **kwargs):
        host = host.decode() if isinstance(host, bytes) else host
        if host not in _LOCAL:
            _record(host)
        return _real(host, *args, **kwargs)

    def _refuse_by_name(host, *args, **kwargs):
        if host not in _LOCAL:
            _record(host)
        return "127.0.0.1"

    socket.getaddrinfo = refuse_lookup
    socket.gethostbyname = _refuse_by_name
''')


def _wandb_env(tmp_path: Path, log: Path | None) -> dict:
    env = cli_env(WANDB_SILENT="true")
    if log is not None:  # the guard: every name lookup in Python is recorded (and refused)
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(GUARD)
        env.update(STIMOPT_LOOKUP_LOG=str(log), PYTHONPATH=str(site))
    for key in ("WANDB_MODE", "WANDB_ERROR_REPORTING", "WANDB_DISABLE_GIT"):  # the defaults a lab machine has
        env.pop(key, None)
    return env


def test_wandb_offline_resolves_no_host_name(tmp_path):
    pytest.importorskip("wandb")
    log = tmp_path / "lookups.txt"
    log.write_text("")
    (tmp_path / "child.py").write_text(WANDB_CHILD)
    proc = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "run")], cwd=tmp_path,
                          env=_wandb_env(tmp_path, log), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "offline run written" in proc.stdout, proc.stderr
    assert log.read_text() == "", f"wandb looked up: {log.read_text().split()}"
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))  # the run is still recorded, for `wandb sync`


def test_wandb_offline_opens_no_network_connection(tmp_path):
    """The same run under strace: no process (wandb's Go service included) connects to anything but loopback."""
    pytest.importorskip("wandb")
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    probe = subprocess.run([strace, "-f", "-o", os.devnull, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("strace cannot trace here (ptrace not permitted)")
    trace = tmp_path / "trace.txt"
    (tmp_path / "child.py").write_text(WANDB_CHILD)
    proc = subprocess.run([strace, "-f", "-qq", "-e", "trace=connect,sendto,sendmsg,sendmmsg", "-o", str(trace),
                           sys.executable, str(tmp_path / "child.py"), str(tmp_path / "run")], cwd=tmp_path,
                          env=_wandb_env(tmp_path, None), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    network = [line for line in trace.read_text().splitlines()
               if ("AF_INET" in line and "127.0.0.1" not in line and '"::1"' not in line) or "htons(53)" in line]
    assert network == [], network[:5]


def test_sqlite_and_json_corruption_never_reach_the_user_as_tracebacks(tmp_path, bank):
    """A store that is not SQLite at all, beside `resume=PATH`: one line naming the salvage command."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "evaluations.sqlite").write_text("not a database\n")
    proc = run_cli([*FAST, "budget=20", f"resume={run}"], tmp_path, check=False)
    line = assert_one_line(proc, "stimopt", "evaluations.sqlite")
    assert "stimopt-recover" in line or "not a readable run store" in line or "not a valid" in line
    with pytest.raises(sqlite3.DatabaseError):  # and the file is left as it was, for the recovery tool
        sqlite3.connect(run / "evaluations.sqlite").execute("SELECT * FROM sqlite_master").fetchall()
    assert json.loads((bank / "manifest.json").read_text())["size"] == 120  # the shared bank was never altered
