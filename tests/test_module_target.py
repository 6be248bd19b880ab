"""target=module: a lab's own nn.Module (built by a factory in a module of its own, weights from a
checkpoint loaded with weights_only=True) as a stimopt target, through the CLI; bad factories,
checkpoints and output indices are one clear line."""
from __future__ import annotations

import json
import sqlite3
import textwrap

import numpy as np
import pytest
import torch

from conftest import cli_env, run_cli
from stimopt.errors import StimoptError

LAB = textwrap.dedent('''
    import torch

    class LabNet(torch.nn.Module):
        """A lab's tiny model: one conv, pooled, three 'neurons'; takes gray 12 px images."""

        def __init__(self, channels=4):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, channels, 3, padding=1)
            self.fc = torch.nn.Linear(channels, 3)

        def forward(self, x):
            assert x.shape[1:] == (1, 12, 12), x.shape
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    def build(channels=4):
        return LabNet(channels)

    def not_a_model():
        return 42
''')


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A module ``labnet_mod`` on PYTHONPATH (sys.path here) and a checkpoint of trained-looking weights."""
    pkg = tmp_path / "lab"
    pkg.mkdir()
    (pkg / "labnet_mod.py").write_text(LAB)
    monkeypatch.syspath_prepend(str(pkg))
    import importlib

    mod = importlib.import_module("labnet_mod")
    torch.manual_seed(3)
    net = mod.build()
    with torch.no_grad():
        net.fc.bias.copy_(torch.tensor([10.0, -20.0, 30.0]))  # marks the checkpoint's weights
    ck = tmp_path / "labnet.pt"
    torch.save(net.state_dict(), ck)
    yield {"dir": pkg, "checkpoint": ck, "net": net.eval()}
    import sys

    sys.modules.pop("labnet_mod", None)


def test_module_target_reads_the_checkpoint_and_adapts_images(lab):
    from stimopt_plugins.module import ModuleTarget

    t = ModuleTarget(factory="labnet_mod:build", checkpoint=str(lab["checkpoint"]), output=2, input="gray", size=12,
                     device="cpu")
    assert t.n_outputs == 1 and t.differentiable
    x = torch.rand(4, 3, 20, 20, generator=torch.Generator().manual_seed(0), requires_grad=True)
    r = t.evaluate(x)
    gray = torch.nn.functional.interpolate(x, size=(12, 12), mode="bilinear", antialias=True, align_corners=False)
    gray = (gray * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert torch.allclose(r, lab["net"](gray)[:, 2], atol=1e-5)  # the checkpoint's weights, neuron 2
    (g,) = torch.autograd.grad(r.sum(), x)
    assert g.abs().sum() > 0
    several = ModuleTarget(factory="labnet_mod:build", checkpoint=str(lab["checkpoint"]), output=[0, 2], input="gray",
                           size=12, device="cpu")
    assert several.n_outputs == 2 and several.evaluate(x).shape == (4, 2)


@pytest.mark.parametrize("options, needle", [
    ({"factory": "labnet_mod.build"}, "package.module:callable"),
    ({"factory": "no_such_lab_module:build"}, "cannot be imported"),
    ({"factory": "labnet_mod:missing"}, "has no 'missing'"),
    ({"factory": "labnet_mod:not_a_model"}, "not a torch nn.Module"),
    ({"factory": "os:system"}, "standard library"),
    ({"factory": "labnet_mod:torch"}, "not a class or Python function"),
    ({"factory": "labnet_mod:build", "checkpoint": "nowhere/labnet.pt"}, "put the state dict"),
    ({"factory": "labnet_mod:build", "output": 3}, "out of range"),
    ({"factory": "labnet_mod:build", "input": "rgb"}, "set target.size/target.input"),
    ({"factory": "labnet_mod:build", "input": "bgr"}, "rgb or gray"),
])
def test_module_target_refuses_in_one_line(lab, options, needle):
    from stimopt_plugins.module import ModuleTarget

    opts = {"input": "gray", "size": 12, "device": "cpu", **options}
    with pytest.raises(StimoptError, match=needle) as e:
        ModuleTarget(**opts)
    assert "\n" not in str(e.value)


def test_wrong_checkpoint_is_one_line(lab, tmp_path):
    from stimopt_plugins.module import ModuleTarget

    other = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), other)
    with pytest.raises(StimoptError, match="does not fit"):
        ModuleTarget(factory="labnet_mod:build", checkpoint=str(other), input="gray", size=12, device="cpu")


@pytest.mark.slow
def test_module_target_end_to_end_through_the_cli(lab, tmp_path):
    env = cli_env(PYTHONPATH=str(lab["dir"]), OMP_NUM_THREADS="1")
    common = ["logger=none", "device=cpu", "target=module", "target.factory=labnet_mod:build",
              f"target.checkpoint={lab['checkpoint']}", "target.output=1", "target.input=gray", "target.size=12",
              "generator.size=16"]
    # gradient MEIs (lowering the neuron) on the lab's model, through the engine
    run_cli([*common, "experiment=mei", "budget=20", "batch_size=2", "optimizer.steps_per_ask=4", "direction=min",
             f"hydra.run.dir={tmp_path / 'mei'}"], cwd=tmp_path, env=env)
    summary = json.loads((tmp_path / "mei" / "summary.json").read_text())
    db = sqlite3.connect(next((tmp_path / "mei").glob("*.sqlite")))
    resp = np.array([r[0] for r in db.execute("SELECT response FROM evaluations ORDER BY id")])
    assert len(resp) == 20  # every pass recorded, budget spent exactly
    assert np.all(np.abs(resp - (-20.0)) < 15)  # neuron 1 of the checkpoint (bias -20), not the factory's weights
    assert resp[-2:].mean() < resp[:2].mean()  # direction=min lowers it
    assert "labnet_mod:build[1]" in json.dumps(summary)
