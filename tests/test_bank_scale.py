"""The graph stage's compressed indexes (issue 18): IVF-PQ / IVF-SQ8 graphs report their recall
against exact search in the manifest, the walk runs on them, and exact search streams the bank."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from stimopt.bank import FeatureSpec, build_bank, load_bank
from stimopt.bank.cli import _parser
from stimopt.bank.graph import build_graph, parts_dir, prepare_index, recall_at, search_blocks
from stimopt.bank.index import describe, exact_knn, make_index, n_lists, rerank
from stimopt.bank.manifest import info_text
from stimopt.errors import StimoptError
from stimopt_plugins.imagebeagle import Walk
from tests.conftest import cli_env, run_cli

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
    assert g["refine"] == 8 and "(ivfpq, nprobe 8, re-ranked x8), recall@10 vs exact" in info_text(bank.manifest, out)
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


@pytest.mark.parametrize("extra,nprobe,refine", [([], 64, 2), (["--nprobe", "4", "--refine", "3"], 4, 3)])
def test_cli_nprobe_and_refine_reach_the_graph(tmp_path, extra, nprobe, refine):
    out = tmp_path / "bank"
    args = _parser().parse_args(["build", "demo:60", str(out), "--method", "ivfsq", "--k", "5", *extra])
    build_bank(args.source, out, features=FeatureSpec(model="pixels", input_size=8), k=args.k, method=args.method,
               nprobe=args.nprobe, refine=args.refine, image_size=16)
    g = load_bank(out).manifest["graph"]
    assert (g["nprobe"], g["refine"]) == (nprobe, refine)
    with pytest.raises(StimoptError, match="other options"):  # continuing asks for the options it was built with
        build_bank(args.source, out, features=FeatureSpec(model="pixels", input_size=8), k=args.k, method=args.method,
                   nprobe=args.nprobe, refine=refine + 1, image_size=16)


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


def _power_law(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Hard data for IVF-PQ: variance of axis i ~ 1/i, randomly rotated (no clusters)."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (rng.standard_normal((n, d)) @ ((np.arange(1, d + 1) ** -0.5)[:, None] * rotation)).astype(np.float32)


@pytest.fixture
def faiss_one_thread():
    """faiss on one thread (a shared machine runs tiny indexes faster so); put back after."""
    n = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(n)


@pytest.mark.slow
def test_reranked_ivfpq_graph_beats_the_raw_one_and_is_exact_when_the_shortlist_covers_all(tmp_path, faiss_one_thread):
    x = _power_law(2000, 32)
    raw = build_graph(x, 10, tmp_path / "raw.npy", method="ivfpq", nprobe=16, recall_queries=500, refine=1)
    refined = build_graph(x, 10, tmp_path / "ref.npy", method="ivfpq", nprobe=16, recall_queries=500, refine=4)
    assert raw["refine"] == 1 and refined["refine"] == 4 and "x4fs" in refined["index"]
    assert refined["recall_at_10"] >= raw["recall_at_10"] + 0.2  # measured 0.33 -> 0.71 here
    x = x[:1000]  # every list probed and a shortlist of all rows: the re-ranking is exact search
    whole = build_graph(x, 10, tmp_path / "all.npy", method="ivfpq", nprobe=n_lists(len(x)), recall_queries=500, refine=len(x))
    exact = build_graph(x, 10, tmp_path / "exact.npy", method="exact")
    assert whole["recall_at_10"] == 1.0
    assert np.array_equal(np.load(tmp_path / "all.npy"), np.load(tmp_path / "exact.npy")), exact
    with pytest.raises(StimoptError, match="refine must be 1"):
        build_graph(x, 10, tmp_path / "bad.npy", method="ivfsq", refine=0)


class _Rows:
    """Array-like bank that records the row ranges / row sets each read touches."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.reads = a, a.shape, a.dtype, []

    def __len__(self):
        return len(self.a)

    def __getitem__(self, i):
        out = self.a[i]
        self.reads.append(len(out))
        return out


def test_graph_job_reads_the_index_and_its_rows_not_a_copy_of_all_vectors(tmp_path, faiss_one_thread):
    import tracemalloc

    x = _power_law(10000, 32, seed=1)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    parts = parts_dir(tmp_path / "g.npy")
    parts.mkdir()
    prepare_index(mm, "ivfpq", parts, refine=4)
    tracemalloc.start()
    search_blocks(mm, 10, "ivfpq", parts, {3: (3000, 3200)}, nprobe=8)  # one job: block 3, faiss re-ranks on the memmap
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < mm.nbytes / 4, peak  # 1.3 MB of vectors: the job never holds a copy of them
    rows = _Rows(mm)
    search_blocks(rows, 10, "ivfpq", parts, {4: (4000, 4200)}, nprobe=8)  # any array-like bank: numpy re-ranking
    assert rows.reads[0] == 200 and max(rows.reads) <= 200 * 44 < len(x)  # its rows, then its candidates' rows
    a, b = np.load(parts / "00003.npy"), np.load(parts / "00004.npy")
    q = np.asarray(mm[3000:3010])
    assert np.array_equal(rerank(mm, q, np.tile(np.arange(500), (10, 1)), 5), exact_knn(q, np.asarray(mm[:500]), 5))
    assert a.shape == b.shape == (200, 10) and not (a == np.arange(3000, 3200)[:, None]).any()


# ---- a one-node SLURM cluster on localhost (Debian's slurm-wlm + munge; .ci/run installs them) ----

SLURM_BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "sinfo")


def _slurm_conf(folder: Path, host: str) -> str:
    return "\n".join([
        "ClusterName=stimopt-ci", f"SlurmctldHost={host}(127.0.0.1)", "AuthType=auth/munge", "SlurmUser=root",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SchedulerType=sched/builtin",
        "SelectType=select/cons_tres", "MpiDefault=none", "KillWait=1", "JobAcctGatherType=jobacct_gather/none", "ReturnToService=2",
        f"SlurmctldPidFile={folder}/slurmctld.pid", f"SlurmdPidFile={folder}/slurmd.pid",
        f"StateSaveLocation={folder}/state", f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldLogFile={folder}/slurmctld.log", f"SlurmdLogFile={folder}/slurmd.log",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=8000 State=UNKNOWN",
        f"PartitionName=ci Nodes={host} Default=YES MaxTime=60 State=UP", ""])


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """slurmctld + slurmd bound to localhost, started here and stopped at the end (needs root)."""
    missing = [b for b in SLURM_BINARIES if not shutil.which(b) and not Path("/usr/sbin", b).exists()]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs Debian's slurm-wlm and munge ({', '.join(missing) or 'root'} missing here); .ci/run installs them")
    folder = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    conf = folder / "slurm.conf"
    conf.write_text(_slurm_conf(folder, socket.gethostname().split(".")[0]))
    (folder / "cgroup.conf").write_text("CgroupPlugin=autodetect\nIgnoreSystemd=yes\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started = []
    if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["/usr/sbin/mungekey", "-c"], check=True)
        subprocess.run(["chown", "-R", "munge:munge", "/run/munge", "/etc/munge"], check=True)
        subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"], check=True)
        started.append(Path("/run/munge/munged.pid"))
    subprocess.run(["/usr/sbin/slurmctld", "-f", str(conf)], env=env, check=True)
    subprocess.run(["/usr/sbin/slurmd", "-f", str(conf)], env=env, check=True)
    started += [folder / "slurmctld.pid", folder / "slurmd.pid"]
    deadline = time.time() + 60
    while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout:
        if time.time() > deadline:
            pytest.fail(f"the local SLURM node did not come up: {(folder / 'slurmd.log').read_text()[-500:]}")
        time.sleep(1)
    yield env
    for pidfile in reversed(started):  # only the daemons this fixture started, by their pids
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)


@pytest.mark.slow
def test_submitit_slurm_build_goes_through_sbatch_and_equals_the_single_process_build(tmp_path, slurm_cluster):
    from stimopt.bank.cli import main

    common = ["build", "demo:120", "--model", "pixels", "--input-size", "8", "--image-size", "24", "--k", "6",
              "--shard-size", "60"]
    main([*common, str(tmp_path / "single")])
    overrides = ["hydra.launcher.partition=ci", "hydra.launcher.timeout_min=10", "hydra.launcher.mem_gb=1",
                 "hydra.launcher.cpus_per_task=1"]
    run_cli([*common, str(tmp_path / "slurm"), "--launcher", "submitit_slurm",
             *[a for o in overrides for a in ("--launcher-override", o)]],
            cwd=tmp_path, program="stimopt-bank", timeout=600, env=cli_env(SLURM_CONF=slurm_cluster["SLURM_CONF"]))
    for stage in ("features", "graph"):  # one sbatch job array per stage, one SLURM task per shard
        jobs = (tmp_path / "slurm" / "hydra" / stage / ".submitit")
        script = next(jobs.glob("*/*_submission.sh")).read_text()
        assert "#SBATCH --array=0-1" in script and "#SBATCH --partition=ci" in script and "#SBATCH --mem=1GB" in script
        assert len(list(jobs.glob("*_*/*_0_result.pkl"))) == 2, stage
    a, b = load_bank(tmp_path / "single"), load_bank(tmp_path / "slurm")
    for name in ("features.npy", "graph.npy", "coresets.npy", "offsets.npy"):
        assert np.array_equal(np.load(a.path / name), np.load(b.path / name)), name


@pytest.mark.slow
def test_slurm_job_cancelled_mid_shard_is_resumed_by_rerunning_the_command(tmp_path, slurm_cluster):
    """scancel the feature job array while its shards compute: no bank is written; the same command
    again finishes it (a killed job's half-written NNNNN.tmp-PID folder is removed) and
    the bank equals the single-process build."""
    from stimopt.bank.cli import main
    from stimopt.bank.manifest import shard_dir
    from tests.conftest import BIN

    common = ["build", "demo:120", "--model", "pixels", "--input-size", "8", "--image-size", "24", "--k", "6",
              "--shard-size", "60"]
    main([*common, str(tmp_path / "single")])
    out = tmp_path / "slurm"
    cmd = [str(BIN / "stimopt-bank"), *common, str(out), "--launcher", "submitit_slurm",
           *[a for o in ("hydra.launcher.partition=ci", "hydra.launcher.timeout_min=10", "hydra.launcher.mem_gb=1")
             for a in ("--launcher-override", o)]]
    env = cli_env(SLURM_CONF=slurm_cluster["SLURM_CONF"])
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, running = time.time() + 120, ""
    while not running and time.time() < deadline and first.poll() is None:
        running = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%F"], env=env, capture_output=True, text=True).stdout.split()
        running = running[0] if running else ""
        time.sleep(0.05)
    assert running, f"no SLURM job started running: {first.communicate(timeout=60)[0][-800:] if first.poll() is None else first.stdout.read()[-800:]}"
    # submitit's job ignores SIGTERM; SIGKILL follows after KillWait (1 s here), mid-shard.
    subprocess.run(["scancel", running], env=env, check=True)
    while subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline + 60, "the cancelled SLURM jobs did not go away"
        time.sleep(0.2)
    # This one-node cluster keeps no accounting (no slurmdbd, so no sacct): submitit cannot learn that
    # the jobs were cancelled and would wait for them forever. Stop the waiting command as a user would.
    if first.poll() is None:
        first.terminate()
    first.communicate(timeout=60)
    assert not (out / "manifest.json").exists()
    assert not (shard_dir(out, 0).exists() and shard_dir(out, 1).exists()), "the jobs finished before scancel"
    orphan = shard_dir(out, 0).with_name("00000.tmp-99999")  # what a job killed while writing its shard leaves
    orphan.mkdir(parents=True, exist_ok=True)
    (orphan / "features.npy").write_bytes(b"half")
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-800:]
    assert not orphan.exists()
    a, b = load_bank(tmp_path / "single"), load_bank(out)
    for name in ("features.npy", "graph.npy", "coresets.npy", "offsets.npy"):
        assert np.array_equal(np.load(a.path / name), np.load(b.path / name)), name
