"""The plugin API: every hook, entry-point loading, STIMOPT_LOAD_PLUGINS, a broken plugin, the
third-party example package, `stimopt-plugins`, and composing/instantiating the config groups."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import stimopt
from stimopt import plugins
from conftest import FAST, cli_env, run_cli


def _plugin_module(tmp_path: Path):
    """An in-memory plugin implementing all four hooks."""

    class Constant(stimopt.Target):
        def __init__(self, value: float = 1.0):
            self.value = value

        def evaluate(self, images):
            return np.full(len(images), self.value, np.float32)

    class BankOnly(stimopt.Optimizer):
        accepts = (stimopt.BankSpace,)

        def ask(self, n):
            return np.arange(n)

        def tell(self, codes, scores):
            pass

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    conf = tmp_path / "conf" / "target"
    conf.mkdir(parents=True)
    (conf / "constant.yaml").write_text("name: constant\nvalue: 3.0\n")
    mod = types.ModuleType("test_plugin_module")
    mod.register_targets = stimopt.hookimpl(lambda register: register("constant", Constant))
    mod.register_generators = stimopt.hookimpl(lambda register: None)
    mod.register_optimizers = stimopt.hookimpl(lambda register: register("bank_only", BankOnly))
    mod.register_config_dirs = stimopt.hookimpl(lambda register: register(str(tmp_path / "conf")))
    return mod


@pytest.fixture
def test_plugin(tmp_path):
    mod = _plugin_module(tmp_path)
    plugins.register_plugin(mod, "testplugin")
    yield mod
    plugins.unregister_plugin("testplugin")


def test_every_hook_registers(test_plugin, tmp_path):
    reg = plugins.registry()
    assert reg["target"]["constant"][1] == "testplugin"
    assert reg["optimizer"]["bank_only"][1] == "testplugin"
    assert ("testplugin", str(tmp_path / "conf")) in plugins.config_dirs()
    # built-ins come through the very same hooks
    assert reg["target"]["cnn_unit"][1] == "cnn"
    assert {"fourier", "pixels"} <= set(reg["generator"])
    assert {"random", "nevergrad"} <= set(reg["optimizer"])


def test_registered_config_dir_is_on_hydras_search_path(test_plugin, compose):
    cfg = compose(["target=constant"])
    assert cfg.target.name == "constant" and cfg.target.value == 3.0


def test_unfit_trio_fails_at_composition_naming_what_fits(test_plugin, compose, tmp_path):
    from stimopt.experiment import build_run

    cfg = compose(["logger=none", "generator.size=32", "optimizer=random", "target=constant"])
    cfg.optimizer.name = "bank_only"
    with pytest.raises(stimopt.StimoptError) as err:
        build_run(cfg, tmp_path / "run")
    msg = str(err.value)
    assert "optimizer 'bank_only' cannot search generator 'fourier' (continuous codes)" in msg
    assert "optimizers that fit 'fourier':" in msg and "random" in msg


def test_unknown_registered_name_lists_choices():
    with pytest.raises(stimopt.StimoptError, match=r"unknown target 'nope'; registered targets: .*cnn_unit"):
        plugins.lookup("target", "nope")


def test_stimopt_plugins_lists_builtins_and_example(tmp_path):
    out = json.loads(run_cli(["--json"], tmp_path, program="stimopt-plugins").stdout)
    by_name = {p["name"]: p for p in out}
    assert by_name["cnn"]["registers"] == {"target": ["cnn_unit"]} and by_name["cnn"]["package"] == "stimopt"
    example = by_name["example"]
    assert example["version"] == "0.2.0" and example["package"] == "stimopt-example-plugin"
    assert example["registers"] == {"target": ["edge_neuron"], "optimizer": ["hillclimb"]}
    assert example["config_dirs"] and example["config_dirs"][0].endswith("conf")
    assert "register_targets" in example["hooks"]
    text = run_cli([], tmp_path, program="stimopt-plugins").stdout
    assert "example: package stimopt-example-plugin 0.2.0" in text


def test_load_plugins_env_restricts(tmp_path):
    env = cli_env(STIMOPT_LOAD_PLUGINS="cnn,core")
    out = json.loads(run_cli(["--json"], tmp_path, program="stimopt-plugins", env=env).stdout)
    assert sorted(p["name"] for p in out) == ["cnn", "core"]


def test_a_broken_plugin_is_named_and_the_rest_work(tmp_path):
    site = tmp_path / "site"
    (site / "broken_plugin").mkdir(parents=True)
    (site / "broken_plugin" / "__init__.py").write_text("raise ImportError('needs libfoo')\n")
    dist = site / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[stimopt]\nbroken = broken_plugin\n")
    env = cli_env(PYTHONPATH=str(site))
    out = json.loads(run_cli(["--json"], tmp_path, program="stimopt-plugins", env=env).stdout)
    broken = next(p for p in out if p["name"] == "broken")
    assert "needs libfoo" in broken["error"]
    assert any(p["name"] == "cnn" and not p["error"] for p in out)
    proc = run_cli([*FAST, "budget=20"], tmp_path, env=env)
    assert "plugin 'broken' failed to load (ImportError: needs libfoo); the others work" in proc.stderr


def test_third_party_example_plugin_end_to_end(tmp_path):
    proc = run_cli(["target=edge_neuron", "optimizer=hillclimb", "logger=none", "generator.size=32", "budget=200",
                    "hydra.run.dir=run"], tmp_path)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["target"] == "edge_neuron(45.0 deg)" and summary["optimizer_name"].startswith("HillClimb")
    assert summary["best_response"] > 0 and "best response" in proc.stdout


def _group_options(group: str) -> list[str]:
    names = set()
    for _, folder in plugins.config_dirs():
        names |= {p.stem for p in (Path(folder) / group).glob("*.yaml")}
    return sorted(names)


@pytest.mark.parametrize("group", ["target", "generator", "optimizer", "logger", "objective"])
def test_every_config_group_option_composes(group, compose):
    options = _group_options(group)
    assert options
    for option in options:
        cfg = compose([f"{group}={option}"])
        assert cfg[group] is not None


CORE_TRIOS = [
    ("generator", "fourier"), ("generator", "pixels"), ("optimizer", "random"), ("optimizer", "cmaes"),
    ("optimizer", "nevergrad"), ("target", "cnn_unit"), ("target", "edge_neuron"), ("optimizer", "hillclimb"),
]


@pytest.mark.parametrize("group,option", CORE_TRIOS)
def test_core_and_example_options_instantiate_and_step(group, option, compose, tmp_path):
    from stimopt.experiment import build_run

    base = FAST if (group, option) != ("target", "edge_neuron") else ["logger=none", "generator.size=32"]
    cfg = compose([*base, f"{group}={option}", "budget=40"])
    run = build_run(cfg, tmp_path / "run")
    run.step()
    run.step()
    assert run.store.n_evaluations() == 40 and np.isfinite(run.progress.best_response)
    run.store.close()
