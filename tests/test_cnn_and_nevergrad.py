"""The CNN unit target (offline pretrained Lite0, layer truncation, units, weights errors) and the
nevergrad wrapper under batched ask/tell."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import stimopt
from stimopt.models import LayerReader, load_model
from stimopt_plugins.cnn import CNNUnit
from stimopt_plugins.nevergrad import NevergradOptimizer


def test_offline_lite0_weights_are_imagenet_trained():
    import skimage.data
    import torch.nn.functional as F

    model, mean, std = load_model("efficientnet_lite0")
    img = torch.tensor(skimage.data.chelsea() / 255.0, dtype=torch.float32).permute(2, 0, 1)[None]
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    x = (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        top = model(x).softmax(-1)[0].topk(3).indices.tolist()
    assert set(top) <= {281, 282, 283, 284, 285}  # ImageNet's domestic cats (tabby, tiger, Persian, Siamese, Egyptian)


def test_layer_reader_stops_early_and_matches_a_full_forward(tiny_cnn):
    captured = {}
    tiny_cnn.relu2.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        tiny_cnn(x)
    reader = LayerReader(tiny_cnn, "relu2")
    called = []
    tiny_cnn.fc.register_forward_hook(lambda *a: called.append(1))
    with torch.no_grad():
        out = reader(x)
    assert torch.equal(out, captured["out"]) and not called


def test_unit_reads_one_channel_at_the_centre_or_mean(tiny_cnn):
    x = torch.rand(4, 3, 16, 16)
    t = CNNUnit(model=tiny_cnn, layer="conv2", unit=3, input_size=16, device="cpu")
    feats = LayerReader(tiny_cnn, "conv2")((x - t.mean) / t.std)
    assert t.position == (4, 4)
    assert torch.allclose(t.evaluate(x), feats[:, 3, 4, 4])
    m = CNNUnit(model=tiny_cnn, layer="conv2", unit=3, input_size=16, spatial="mean", relu=True, device="cpu")
    assert torch.allclose(m.evaluate(x), feats[:, 3].relu().mean(dim=(1, 2)))


def test_unit_and_position_out_of_range(tiny_cnn):
    with pytest.raises(stimopt.StimoptError, match=r"unit 8 is out of range: layer 'conv2' of TinyCNN has 8 channels \(0..7\)"):
        CNNUnit(model=tiny_cnn, layer="conv2", unit=8, input_size=16, device="cpu")
    with pytest.raises(stimopt.StimoptError, match=r"position \[9, 0\] is outside layer 'conv2' \(8x8 at 16 px\)"):
        CNNUnit(model=tiny_cnn, layer="conv2", unit=0, position=[9, 0], input_size=16, device="cpu")


def test_weight_file_that_does_not_fit_is_one_line(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(stimopt.StimoptError, match="does not fit model 'resnet18'") as err:
        load_model("resnet18", str(path))
    assert "\n" not in str(err.value)
    with pytest.raises(stimopt.StimoptError, match="does not exist"):
        load_model("resnet18", str(tmp_path / "missing.pth"))


def test_a_saved_state_dict_loads(tmp_path):
    model, _, _ = load_model("resnet18", "random")
    torch.save(model.state_dict(), tmp_path / "w.pth")
    again, _, _ = load_model("resnet18", str(tmp_path / "w.pth"))
    assert torch.equal(again.conv1.weight, model.conv1.weight)


def test_timm_weights_missing_offline_is_immediate_and_names_the_repo():
    with pytest.raises(stimopt.StimoptError, match=r"Hugging Face repo timm/"):
        load_model("vit_tiny_patch16_224")


def sphere_run(opt, generations=15, batch=20, nan_every=0):
    space = stimopt.ContinuousSpace(dim=30)
    opt.setup(space, seed=0, budget=generations * batch, batch_size=batch)
    first = None
    for g in range(generations):
        codes = opt.ask(batch)
        scores = -((codes.astype(np.float64) - 1.0) ** 2).sum(axis=1)
        if nan_every:
            scores[::nan_every] = np.nan
        first = scores if first is None else first
        opt.tell(codes, scores)
    return first, scores


@pytest.mark.parametrize("name,options", [("ParametrizedCMA", {"popsize": 20, "diagonal": True}), ("CMA", {}), ("TwoPointsDE", {})])
def test_nevergrad_batched_ask_tell_improves(name, options):
    first, last = sphere_run(NevergradOptimizer(name, options))
    assert np.nanmean(last) > np.nanmean(first) + 5


def test_nevergrad_tolerates_missing_scores():
    first, last = sphere_run(NevergradOptimizer("ParametrizedCMA", {"popsize": 20, "diagonal": True}), nan_every=3)
    assert np.nanmean(last) > np.nanmean(first)


def test_nevergrad_state_round_trip_continues_identically():
    a = NevergradOptimizer("ParametrizedCMA", {"popsize": 20, "diagonal": True})
    sphere_run(a, generations=3)
    b = NevergradOptimizer("ParametrizedCMA", {"popsize": 20, "diagonal": True})
    b.setup(a.space, seed=0, budget=300, batch_size=20)  # a resume rebuilds with the run's seed, then replays
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.ask(20), b.ask(20))
    state = a.state_dict()  # arrays and plain values (no pickle), small enough for per-generation checkpoints
    assert sum(v.nbytes for v in state.values() if isinstance(v, np.ndarray)) < 10_000
