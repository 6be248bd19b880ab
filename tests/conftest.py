"""Shared test helpers: tiny models, the CLI in a subprocess, composed configs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sigint_default() -> None:
    """``preexec_fn`` of a child a test sends SIGINT to: Ctrl-C's default disposition, whatever pytest inherited
    (a background job of a non-interactive shell starts with SIGINT ignored, and so would the child)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path, program: str = "stimopt", timeout: float = 300, check: bool = True, env=None):
    """Run a console script of this environment; returns the CompletedProcess."""
    proc = subprocess.run(
        [str(BIN / program), *args], cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{program} {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


# A small, fast target for CLI tests: a randomly initialized resnet18 read at 32 px. Never
# presented as pretrained: weights=random.
TINY_TARGET = ["target.model=resnet18", "target.weights=random", "target.layer=layer2", "target.input_size=32"]
FAST = ["logger=none", "generator.size=32", *TINY_TARGET]


class TinyCNN(torch.nn.Module):
    """A tiny randomly initialized CNN for unit tests."""

    def __init__(self, channels: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.relu1 = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1, stride=2)
        self.relu2 = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(channels, 4)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture
def tiny_cnn():
    return TinyCNN()


@pytest.fixture
def compose():
    from stimopt.config import compose as _compose

    return _compose


@pytest.fixture
def one_thread():
    """Tiny models run faster single-threaded on a shared machine; the thread count is put back after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def stop_sim(rig, sim, timeout: float = 30) -> None:
    """Ask a running ``stimopt-rig-sim`` to stop (its STOP file) and wait for it; kill it if it hangs."""
    rig.mkdir(parents=True, exist_ok=True)
    (rig / "STOP").touch()
    try:
        sim.wait(timeout)
    except subprocess.TimeoutExpired:
        sim.kill()
