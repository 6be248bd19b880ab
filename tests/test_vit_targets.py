"""Transformer layers as targets: a ViT block's [B, tokens, C] output read as one token
(target.token=cls|mean|INDEX) by cnn_unit and by the fitting backbones; wrong or missing token
values are one line."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import cli_env, run_cli
from stimopt.errors import StimoptError
from stimopt.models import LayerReader, layer_features, parse_token
from stimopt_plugins.cnn import CNNUnit


@pytest.fixture
def tiny_vit():
    import timm

    torch.manual_seed(0)  # 32 px, patch 8: 16 patch tokens + 1 class token, 24 channels
    return timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=2,
                                                            num_heads=2, num_classes=5).eval()


def _block_output(net, x, layer="blocks.1"):
    captured = {}
    handle = dict(net.named_modules())[layer].register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    with torch.no_grad():
        net((x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    handle.remove()
    return captured["out"]


def test_cls_mean_and_index_tokens_read_the_block_output(tiny_vit):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = _block_output(tiny_vit, x)
    assert out.shape == (4, 17, 24)
    expected = {"cls": out[:, 0, 5], "mean": out[:, 1:, 5].mean(1), 3: out[:, 3, 5], "-1": out[:, -1, 5]}
    for token, want in expected.items():
        t = CNNUnit(model=tiny_vit, layer="blocks.1", unit=5, token=token, device="cpu")
        assert t.input_size == 32  # the ViT's own input size, not the CNN default
        got = t.evaluate(x)
        assert got.shape == (4,)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert "token" in t.describe()
    assert not torch.allclose(expected["cls"], expected["mean"])


def test_vit_unit_is_differentiable(tiny_vit):
    t = CNNUnit(model=tiny_vit, layer="blocks.1", unit=2, token="cls", device="cpu")
    x = torch.rand(2, 3, 32, 32).requires_grad_(True)
    (grad,) = torch.autograd.grad(t.evaluate(x).sum(), x)
    assert grad.abs().flatten(1).sum(1).gt(0).all()


@pytest.mark.parametrize("token, message", [
    (None, r"gives transformer tokens \[B, 17, 24\]: set target.token=cls, target.token=mean or target.token=INDEX \(0..16\)"),
    ("first", r"target.token must be cls, mean or a token index \(e.g. 0\), got 'first'"),
    (17, r"target.token=17 is out of range: layer 'blocks.1' of VisionTransformer has 17 tokens \(0..16\)"),
    (True, r"target.token must be cls, mean or a token index"),
])
def test_wrong_or_missing_token_is_one_line(tiny_vit, token, message):
    with pytest.raises(StimoptError, match=message) as err:
        CNNUnit(model=tiny_vit, layer="blocks.1", unit=0, token=token, device="cpu")
    assert "\n" not in str(err.value)


def test_token_on_a_cnn_map_and_cls_without_class_token_are_one_line(tiny_cnn):
    with pytest.raises(StimoptError, match=r"target.token=cls applies to transformer token outputs .* remove target.token"):
        CNNUnit(model=tiny_cnn, layer="conv2", unit=0, input_size=16, token="cls", device="cpu")
    with pytest.raises(StimoptError, match="has no class token; use token=mean"):
        layer_features(torch.zeros(2, 16, 8), "cls", prefix_tokens=0)
    assert parse_token("7") == 7 and parse_token(None) is None and parse_token("MEAN") == "mean"
    with pytest.raises(StimoptError, match=r"\[B, C, H, W\], \[B, C\] or \[B, tokens, C\]"):
        layer_features(torch.zeros(2, 3, 4, 5, 6))


def test_fitting_backbone_reads_tokens_and_rebuilds_from_its_checkpoint(tmp_path, tiny_vit):
    from stimopt.fit import compose_fit, run_fit
    from stimopt_plugins.neural import Backbone, EncoderTarget

    bb = Backbone(model_module=tiny_vit, layer="blocks.1", input_size=32, device="cpu", token="mean")
    x = torch.rand(3, 3, 32, 32)
    assert bb(x).shape == (3, 24, 1, 1) and bb.spec()["token"] == "mean"
    with pytest.raises(StimoptError, match="set model.token=cls"):
        Backbone(model_module=tiny_vit, layer="blocks.1", input_size=32, device="cpu")
    # a named timm ViT (random weights, its fixed 224 px input) through stimopt-fit and back as a target
    cfg = compose_fit(["model=encoder", "model.backbone=vit_tiny_patch16_224", "model.weights=random",
                       "model.layer=blocks.0", "model.token=cls", "model.input_size=224", "data.size=32", "device=cpu",
                       "data.twin.n_images=40", "data.twin.n_neurons=2"])
    report = run_fit(cfg, tmp_path)
    assert report["backbone"]["token"] == "cls" and report["n_features"] == 192
    target = EncoderTarget(tmp_path / "model.pt", roi=0, device="cpu")
    assert target.backbone.token == "cls"
    imgs = torch.rand(2, 3, 32, 32).requires_grad_(True)
    (grad,) = torch.autograd.grad(target.evaluate(imgs).sum(), imgs)
    assert grad.abs().sum() > 0


@pytest.mark.slow
def test_vit_unit_from_the_command_line_says_its_weights_are_random(tmp_path):
    run = tmp_path / "run"
    proc = run_cli(["target=cnn_unit", "target.model=vit_tiny_patch16_224", "target.weights=random",
                    "target.layer=blocks.6", "target.token=cls", "optimizer=cmaes", "generator=fourier", "budget=40",
                    "logger=none", f"hydra.run.dir={run}"], cwd=tmp_path, env=cli_env(OMP_NUM_THREADS="1"))
    assert "random weights" in proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_evaluations"] == 40 and "token cls" in summary["target"] and "random weights" in summary["target"]
    bad = run_cli(["target=cnn_unit", "target.model=vit_tiny_patch16_224", "target.weights=random",
                   "target.layer=blocks.6", "budget=20", "logger=none", f"hydra.run.dir={tmp_path / 'bad'}"],
                  cwd=tmp_path, check=False)
    assert bad.returncode != 0 and "set target.token=cls" in bad.stderr
