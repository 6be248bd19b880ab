"""Vis-Lens landscapes and their optimizers on planted targets (CPU, tiny models trained in the test)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import stimopt
from stimopt.errors import StimoptError
from stimopt.objective import Objective
from stimopt_plugins.vislens.vae import ConvVAE, LinearVAE, PriorSpec, encode_means, landscape_report, save_landscape, train_vae


pytestmark = pytest.mark.usefixtures("one_thread")


class PlantedTarget(stimopt.Target):
    """A linear target: mean red minus mean blue."""

    differentiable = True

    def evaluate(self, images):
        return images[:, 0].mean((1, 2)) - images[:, 2].mean((1, 2))


def test_activation_prior_definition():
    spec = PriorSpec(latent_dim=4, mu=1.0, lam=1.0, eps=1e-3, prior_dims=2, center="zero", sigma_max=10.0)
    spec.fit_normalization(np.array([-2.0, 2.0]))  # sd 2: r_n = r / 2
    mean, sigma = spec.params(torch.tensor([4.0, -1.0, 0.0]))
    assert mean.tolist() == [[1, 1, 0, 0], [-1, -1, 0, 0], [-1, -1, 0, 0]]  # r_n <= 0 -> mu_neg; unconstrained dims 0
    assert sigma[0, 0] == pytest.approx(1 / (2 + 1e-3)) and sigma[1, 0] == pytest.approx(1 / (0.5 + 1e-3))
    assert sigma[2, 0] == pytest.approx(10.0)  # |r_n| = 0: clipped to sigma_max, barely constrained
    assert sigma[:, 2:].eq(1).all()
    std = PriorSpec(prior="standard", latent_dim=4)
    assert std.mu_pos.abs().sum() == 0
    with pytest.raises(StimoptError, match="prior must be one of"):
        PriorSpec(prior="weird")


def test_linear_vae_training_reduces_loss_and_separates_by_activation_sign():
    torch.manual_seed(0)
    x = torch.randn(400, 16)
    r = (x @ torch.randn(16)).numpy()
    out = {}
    for prior in ("activation", "standard"):
        spec = PriorSpec(prior=prior, latent_dim=4)
        spec.fit_normalization(r)
        model = LinearVAE(16, 4)
        hist = train_vae(model, x, r, spec, epochs=30, lr=2e-2, w_recon=1 / 16, w_kld=5e-2, batch_size=64)
        assert hist[-1]["loss"] < 0.8 * hist[0]["loss"]
        out[prior] = landscape_report(model, x, r, spec)
    act, std = out["activation"], out["standard"]
    assert act["separation_auc"] > 0.85 and act["latent_mean_high"] > 0 > act["latent_mean_low"]
    assert act["separation_auc"] > std["separation_auc"] + 0.2  # the standard VAE has no activation axis
    assert act["recon_r2"] > 0.1


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Conv image VAEs (activation prior and standard) fit to natural crops scored by the planted target."""
    from stimopt.natural import natural_crops

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("vislens_planted")
    imgs = natural_crops(256, 16, seed=0)
    r = PlantedTarget().evaluate(imgs).numpy()
    paths = {}
    for prior in ("activation", "standard"):
        spec = PriorSpec(prior=prior, latent_dim=8, prior_dims=4)
        spec.fit_normalization(r)
        model = ConvVAE(16, 8)
        hist = train_vae(model, imgs, r, spec, epochs=16, lr=3e-3, w_recon=1 / 768, w_kld=1e-2, batch_size=64)
        refs = {"images": (imgs[:8] * 255).round().to(torch.uint8), "codes": encode_means(model, imgs[:8]),
                "responses": torch.from_numpy(r[:8]).float(), "embeddings": None}
        paths[prior] = tmp / f"{prior}.pt"
        save_landscape(paths[prior], model, spec, references=refs, history=hist)
        paths[prior + "_report"] = landscape_report(model, imgs, r, spec)
        paths[prior + "_hist"] = hist
    return paths


def run_trio(generator, target, optimizer, direction, budget=40, batch=8, scores=False):
    """The engine loop as build_run wires it (setup, then the Run binds the objective), without a store on disk.
    Returns the stored responses (and scores) in evaluation order."""
    from stimopt.engine import Run
    from stimopt.store import RunStore

    import tempfile
    from pathlib import Path

    objective = Objective(direction)
    optimizer.setup(generator.space, seed=0, budget=budget, batch_size=batch)
    d = Path(tempfile.mkdtemp())
    run = Run(target=target, generator=generator, optimizer=optimizer, objective=objective, store=RunStore(d / "e.sqlite"),
              budget=budget, batch_size=batch, run_dir=d)
    run.run()
    resp, score = run.store.responses(), run.store.scores()
    run.store.close()
    return (resp, score) if scores else resp


def test_image_vae_landscape_trains_and_separates(planted):
    assert planted["activation_hist"][-1]["loss"] < planted["activation_hist"][0]["loss"]
    assert planted["activation_report"]["separation_auc"] > 0.9
    assert planted["activation_report"]["separation_auc"] > planted["standard_report"]["separation_auc"]


def test_prior_shift_moves_planted_target_in_the_asked_direction(planted):
    from types import SimpleNamespace

    from stimopt_plugins.vislens import ImageVAEGenerator, PriorShift

    gen = ImageVAEGenerator(str(planted["activation"]), size=16, device="cpu")
    for direction in ("max", "min"):
        opt = PriorShift(alphas=[0.0, 1.0])
        resp, score = run_trio(gen, PlantedTarget(), opt, direction, budget=16, batch=8, scores=True)
        rep = opt.report()
        assert rep["direction"] == direction
        means = rep["mean_score_by_alpha"]  # what the optimizer saw: scores, never re-signed
        # The first 8 are the references (alpha 0), the next 8 their shifted versions.
        assert np.allclose(score[:8].mean(), means["0"], atol=1e-5) and np.allclose(score[8:].mean(), means["1"], atol=1e-5)
        assert means["1"] > means["0"] + 0.01
        if direction == "max":
            assert resp[8:].mean() > resp[:8].mean() + 0.01
        else:
            assert resp[8:].mean() < resp[:8].mean() - 0.01
    # A forced direction overrides the run's; a standard-prior landscape has nothing to shift to.
    forced = PriorShift(alphas=[1.0], direction="min")
    forced.setup(gen.space, seed=0, budget=8, batch_size=8)
    forced.bind(SimpleNamespace(direction="max"))
    assert forced.toward == "min"
    with pytest.raises(StimoptError, match="prior=standard"):
        PriorShift().setup(ImageVAEGenerator(str(planted["standard"]), size=16, device="cpu").space, seed=0, budget=8, batch_size=8)


def test_latent_gradient_respects_kld_weight(planted):
    from stimopt_plugins.vislens import ImageVAEGenerator, LatentGradient

    gen = ImageVAEGenerator(str(planted["activation"]), size=16, device="cpu")
    mask = torch.as_tensor(gen.space.landscape.mask) > 0
    mu_pos = torch.as_tensor(gen.space.landscape.mu_pos)
    end = {}
    for w in (0.0, 10.0):
        opt = LatentGradient(lr=0.1, w_kld=w, sigma_prior=0.1, kld="activation", steps_per_ask=10)
        resp = run_trio(gen, PlantedTarget(), opt, "max", budget=3 * 11 * 8, batch=8)  # 3 asks of 10 passes + 1
        z = torch.as_tensor(opt.z)
        end[w] = {"dist": float((z[:, mask] - mu_pos[mask]).norm(dim=1).mean()), "resp": float(resp[-8:].mean()),
                  "start": float(resp[:8].mean()), "steps": opt.report()["adam_steps"], "rows": len(resp)}
    assert end[0.0]["steps"] == 30 and end[0.0]["rows"] == 264  # every Adam step's pass is a stored row
    assert end[0.0]["resp"] > end[0.0]["start"]  # plain ascent climbs
    assert end[10.0]["dist"] < 0.5 * end[0.0]["dist"]  # a heavy KLD pins the prior dims to mu_pos
    # The standard-VAE baseline pulls toward 0 instead.
    opt = LatentGradient(w_kld=10.0, kld="standard", steps_per_ask=10)
    run_trio(gen, PlantedTarget(), opt, "max", budget=11 * 8, batch=8)
    assert float(torch.as_tensor(opt.z).norm(dim=1).mean()) < float(np.linalg.norm(gen.space.landscape.reference_codes, axis=1).mean())


def test_white_box_gradient_ascent_on_fourier_and_cnn_unit(tiny_cnn):
    from stimopt_plugins.cnn import CNNUnit
    from stimopt_plugins.image_codes import FourierGenerator
    from stimopt_plugins.vislens import LatentGradient

    gen = FourierGenerator(size=32, n_freq=4, device="cpu")
    target = CNNUnit(model=tiny_cnn, layer="conv2", unit=1, input_size=32, device="cpu")
    with pytest.raises(StimoptError, match="kld=standard or none"):
        LatentGradient(kld="activation").setup(gen.space, seed=0, budget=8, batch_size=8)
    for direction in ("max", "min"):
        opt = LatentGradient(lr=0.1, kld="none", steps_per_ask=5, init="random")
        resp = run_trio(gen, target, opt, direction, budget=2 * 6 * 8, batch=8)
        sign = 1 if direction == "max" else -1
        assert sign * resp[-8:].mean() > sign * resp[:8].mean()


def test_black_box_optimizer_searches_vae_latents(planted):
    from stimopt_plugins.nevergrad import NevergradOptimizer
    from stimopt_plugins.vislens import ImageVAEGenerator, LatentSpace

    gen = ImageVAEGenerator(str(planted["activation"]), size=16, device="cpu")
    assert isinstance(gen.space, LatentSpace) and isinstance(gen.space, stimopt.ContinuousSpace)
    opt = NevergradOptimizer("ParametrizedCMA", {"popsize": 8, "diagonal": True})
    assert isinstance(gen.space, opt.accepts)
    resp = run_trio(gen, PlantedTarget(), opt, "max", budget=48, batch=8)
    assert resp.max() > resp[:8].mean()


def test_prior_shift_on_a_non_vae_generator_names_what_fits(compose, tmp_path):
    from stimopt.experiment import build_run

    cfg = compose(["optimizer=prior_shift", "logger=none", "generator.size=32", "target.model=resnet18",
                   "target.weights=random", "target.layer=layer2", "target.input_size=32"])
    with pytest.raises(StimoptError) as exc:
        build_run(cfg, tmp_path / "run")
    assert "image_vae" in str(exc.value) and "vislens" in str(exc.value)


def test_fit_image_vae_through_stimopt_fit_and_run(tmp_path):
    from conftest import run_cli

    run_cli(["model=vislens_vae", "model.kind=image", "model.latent_dim=8", "model.image_size=16", "model.target_size=32",
             "model.n_images=120", "model.epochs=2", "model.lr=1e-3", "model.n_references=4", "model.target.model=resnet18",
             "model.target.weights=random", "model.target.layer=layer2", "model.target.input_size=32", "device=cpu",
             "model.decoded_rounds=1", f"out={tmp_path / 'fit'}"], cwd=tmp_path, program="stimopt-fit")
    ck = tmp_path / "fit" / "vislens_vae.pt"
    assert ck.is_file() and (tmp_path / "fit" / "report.json").is_file()
    # every image that reached the target went through the engine and is on record: the 120 inputs,
    # then (decoded_rounds 1) the decoded reconstructions of the training split the prior was refit to
    import json

    from stimopt.store import RunStore

    report = json.loads((tmp_path / "fit" / "report.json").read_text())
    assert report["decoded_rounds"] == 1 and "decoded_response_corr_train" in report
    for folder, n in (("scoring", 120), ("scoring_decoded1", report["n_train"])):
        store = RunStore(tmp_path / "fit" / folder / "evaluations.sqlite")
        assert len(store.responses()) == n and sorted(store.codes()[:, 0].tolist()) == list(range(n))
        store.close()
    run_cli(["logger=none", "generator=image_vae", f"generator.checkpoint={ck}", "generator.size=32", "optimizer=prior_shift",
             "budget=8", "batch_size=4", "target.model=resnet18", "target.weights=random", "target.layer=layer2",
             "target.input_size=32", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert (tmp_path / "run" / "summary.json").is_file()


def test_slerp_and_signed_alphas():
    from types import SimpleNamespace

    from stimopt_plugins.vislens import Landscape, LatentSpace, PriorShift
    from stimopt_plugins.vislens.prior_shift import slerp

    rng = np.random.default_rng(0)
    z, mu = rng.normal(size=(5, 6)), np.ones(6)
    assert np.allclose(slerp(np.zeros(5), z, mu), z) and np.allclose(slerp(np.ones(5), z, mu), np.tile(mu, (5, 1)))
    half = slerp(np.full(5, 0.5), z, mu)
    cos = lambda a, b: (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)  # noqa: E731
    assert np.allclose(cos(half, z), cos(half, np.tile(mu, (5, 1))))  # halfway along the arc
    mask = np.array([1, 1, 1, 0, 0, 0], np.float32)
    land = Landscape(code="latent", prior="activation", reference_codes=z.astype(np.float32), mu_pos=mask, mu_neg=-mask, mask=mask)
    opt = PriorShift(alphas=[1.0, -1.0])
    opt.setup(LatentSpace(dim=6, landscape=land), seed=0, budget=10, batch_size=10)
    opt.bind(SimpleNamespace(direction="min"))
    out = opt.ask(10)
    assert np.allclose(out[:5, :3], -1) and np.allclose(out[5:, :3], 1)  # +1: mu_neg (min); -1: the other prior
    assert np.allclose(out[:, 3:], np.tile(z[:, 3:], (2, 1)))  # dims without the prior never move
    with pytest.raises(StimoptError, match="slerp or linear"):
        PriorShift(interpolation="cubic")


def test_fit_landscape_from_a_recorded_response_table(tmp_path):
    """model.responses: a landscape fit straight from a recorded table (no target), then run."""
    from stimopt.fit import compose_fit, run_fit
    from stimopt.natural import natural_crops
    from stimopt_plugins.vislens import ImageVAEGenerator, PriorShift

    imgs = natural_crops(160, 16, seed=1)
    r = PlantedTarget().evaluate(imgs).numpy()
    np.savez(tmp_path / "imgs.npz", images=(imgs.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
    noise = np.random.default_rng(0).normal(0, 0.01, size=(160, 2))
    table = np.stack([-r, r], 1) + noise  # column "redness" is the planted response
    table[3, 1] = np.nan  # never recorded: left out
    np.savez(tmp_path / "resp.npz", responses=table, names=np.array(["other", "redness"]))
    common = ["model=vislens_vae", "model.kind=image", "model.latent_dim=8", "model.prior_dims=4", "model.image_size=16",
              "model.target_size=16", f"model.images={tmp_path / 'imgs.npz'}", "model.epochs=12", "model.lr=3e-3",
              "model.batch_size=64", "model.w_recon=0.0013", "model.w_kld=0.01", "model.n_references=8", "device=cpu"]
    rep = run_fit(compose_fit([*common, f"model.responses={tmp_path / 'resp.npz'}", "model.output=redness"]), tmp_path / "fit")
    assert rep["target"].startswith("recorded") and "redness" in rep["target"] and rep["n_train"] + rep["n_val"] == 159
    assert rep["train"]["separation_auc"] > 0.8
    gen = ImageVAEGenerator(rep["checkpoint"], size=16, device="cpu")
    for direction, sign in (("max", 1), ("min", -1)):
        resp = run_trio(gen, PlantedTarget(), PriorShift(alphas=[0.0, 1.0]), direction, budget=16, batch=8)
        assert sign * (resp[8:].mean() - resp[:8].mean()) > 0
    # BrainACTIV's rule in the same code space: the fit's ridge over latent means, +w raises, -w lowers
    from stimopt_plugins.vislens import BrainActiv

    assert gen.space.landscape.brainactiv_w is not None
    for direction, sign in (("max", 1), ("min", -1)):
        resp = run_trio(gen, PlantedTarget(), BrainActiv(steps=[0.0, 1.0]), direction, budget=16, batch=8)
        assert sign * (resp[8:].mean() - resp[:8].mean()) > 0
    with pytest.raises(StimoptError, match="not a column"):
        run_fit(compose_fit([*common, f"model.responses={tmp_path / 'resp.npz'}", "model.output=nope"]), tmp_path / "bad")
    with pytest.raises(StimoptError, match="needs model.images"):
        run_fit(compose_fit([*common[:6], *common[7:], f"model.responses={tmp_path / 'resp.npz'}"]), tmp_path / "bad2")


def test_prior_dims_as_a_fraction_of_the_latent():
    assert PriorSpec(latent_dim=32, prior_dims=0.25).prior_dims == 8
    assert PriorSpec(latent_dim=32, prior_dims=0.25).mask.sum() == 8
    assert PriorSpec(latent_dim=32, prior_dims=5).prior_dims == 5 and PriorSpec(latent_dim=32).mask.sum() == 32
    for bad in (0, 33, 1.5, -0.2):
        with pytest.raises(StimoptError, match="prior_dims must be"):
            PriorSpec(latent_dim=32, prior_dims=bad)


def test_fit_scoring_goes_through_the_engine_and_is_recorded(tmp_path):
    from stimopt.store import RunStore
    from stimopt_plugins.vislens.fit import score_through_engine

    imgs = torch.rand(11, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    r = score_through_engine(PlantedTarget(), imgs, tmp_path / "scoring", batch_size=4)
    assert np.allclose(r, PlantedTarget().evaluate(imgs).numpy(), atol=1e-6)
    store = RunStore(tmp_path / "scoring" / "evaluations.sqlite")
    assert len(store.responses()) == 11 and sorted(store.codes()[:, 0].tolist()) == list(range(11))
    store.close()


def test_decoded_rounds_lay_the_prior_out_by_the_decoded_images_responses():
    from stimopt.natural import natural_crops
    from stimopt_plugins.vislens.vae import train_landscape

    imgs = natural_crops(32, 16, seed=2)
    r = PlantedTarget().evaluate(imgs).numpy()
    seen = []

    def score(recon):
        seen.append(recon)
        return PlantedTarget().evaluate(recon).numpy()

    spec = PriorSpec(latent_dim=8, prior_dims=0.5)
    spec.fit_normalization(r)
    model = ConvVAE(16, 8)
    hist, used = train_landscape(model, imgs, r, spec, decoded_rounds=1, score_decoded=score, epochs=2, lr=3e-3, batch_size=32)
    assert len(seen) == 1 and seen[0].shape == imgs.shape and 0 <= float(seen[0].min()) and float(seen[0].max()) <= 1
    assert np.allclose(used, PlantedTarget().evaluate(seen[0]).numpy()) and not np.allclose(used, r)
    assert spec.r_center == pytest.approx(float(np.median(used)))  # the prior now follows the decoded responses
    assert len(hist) == 2 + 1 and hist[-1]["decoded_round"] == 1
    with pytest.raises(StimoptError, match="needs a target"):
        train_landscape(ConvVAE(16, 8), imgs, r, spec, decoded_rounds=1, epochs=1)


@pytest.mark.slow
def test_perceptual_reconstruction_term_keeps_the_features_a_network_reads():
    """model.perceptual: the feature term makes reconstructions closer in the frozen network's
    features than pixel MSE alone does, at the same budget (a tiny CNN made here)."""
    from stimopt.natural import natural_crops
    from stimopt_plugins.vislens.vae import FeatureLoss

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 1, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, 1, 1))
    feat = FeatureLoss(net, layer="2", input_size=16)
    assert feat.describe().endswith(":2@16px")
    imgs = natural_crops(64, 16, seed=3)
    dist = {}
    for w in (0.0, 1.0):
        spec = PriorSpec(prior="standard", latent_dim=8)
        model = ConvVAE(16, 8)
        train_vae(model, imgs, np.zeros(64), spec, epochs=12, lr=3e-3, w_recon=1.0, w_kld=0.01, batch_size=32,
                  perceptual=feat if w else None, w_perceptual=w)
        with torch.no_grad():
            dist[w] = float(feat(model.decode(encode_means(model, imgs)), imgs).mean())
    assert dist[1.0] < 0.9 * dist[0.0], dist
    assert all(p.grad is None for p in net.parameters())  # the network stays frozen
    lin = LinearVAE(16, 4)
    with pytest.raises(StimoptError, match="image VAE"):
        from stimopt_plugins.vislens.vae import vae_loss

        vae_loss(lin, torch.randn(4, 16), torch.zeros(4), PriorSpec(latent_dim=4), 1.0, 1.0, perceptual=feat, w_perceptual=1.0)


@pytest.mark.slow
def test_fit_starts_from_a_fitted_vae(tmp_path):
    """model.init: a structured fit starts from another fit's VAE (e.g. one long standard fit shared
    by every unit); a VAE of another shape is one line."""
    from stimopt.fit import compose_fit, run_fit
    from stimopt.natural import natural_crops
    from stimopt_plugins.vislens.vae import load_landscape

    imgs = natural_crops(80, 16, seed=4)
    np.savez(tmp_path / "imgs.npz", images=(imgs.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
    np.savez(tmp_path / "resp.npz", responses=PlantedTarget().evaluate(imgs).numpy()[:, None], names=np.array(["redness"]))
    common = ["model=vislens_vae", "model.kind=image", "model.latent_dim=8", "model.image_size=16", "model.target_size=16",
              f"model.images={tmp_path / 'imgs.npz'}", f"model.responses={tmp_path / 'resp.npz'}", "model.lr=3e-3",
              "model.n_references=4", "device=cpu"]
    std = run_fit(compose_fit([*common, "model.prior=standard", "model.epochs=6"]), tmp_path / "std")
    start = load_landscape(std["checkpoint"])["model"]
    rep = run_fit(compose_fit([*common, "model.epochs=0", f"model.init={std['checkpoint']}"]), tmp_path / "same")
    assert rep["init"] == std["checkpoint"]
    after = load_landscape(rep["checkpoint"])["model"]  # 0 epochs: exactly the VAE it started from
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), after.state_dict().values()))
    cold = run_fit(compose_fit([*common, "model.epochs=0"]), tmp_path / "cold")
    assert rep["val"]["recon_mse"] < cold["val"]["recon_mse"]
    with pytest.raises(StimoptError, match="model.init"):
        run_fit(compose_fit([*common, "model.latent_dim=4", "model.epochs=1", f"model.init={std['checkpoint']}"]), tmp_path / "bad")


class _FrozenRed(stimopt.Target):
    """Mean red minus mean blue, but not differentiable (a rig-like target) for the contrast term's refusal."""

    def evaluate(self, images):
        return (images[:, 0].mean((1, 2)) - images[:, 2].mean((1, 2))).detach()


@pytest.mark.slow
def test_contrast_term_makes_the_prior_axis_move_the_decoded_response(tmp_path):
    """model.contrast (stimopt's addition): after the contrast phase, setting a code's prior dims to
    mu_pos raises and mu_neg lowers the decoded image's response to the planted target, on items the
    phase never saw; every target pass is an engine evaluation, recorded."""
    from stimopt.natural import natural_crops
    from stimopt.store import RunStore
    from stimopt_plugins.vislens.contrast import train_contrast

    torch.manual_seed(0)
    imgs = natural_crops(160, 16, seed=3)
    x, held = imgs[:128], imgs[128:]
    r = PlantedTarget().evaluate(x).numpy()
    spec = PriorSpec(latent_dim=8, prior_dims=2, lam=0.2)
    spec.fit_normalization(r)
    model = ConvVAE(16, 8)
    std = PriorSpec(prior="standard", latent_dim=8)  # the prior dims start unrelated to the response
    train_vae(model, x, r, std, epochs=4, lr=3e-3, w_recon=1 / 768, w_kld=1e-2, batch_size=64)

    @torch.no_grad()
    def gaps():
        z = encode_means(model, held)
        zp, zn = z.clone(), z.clone()
        zp[:, :2], zn[:, :2] = 1.0, -1.0
        t = PlantedTarget()
        rec, pos, neg = (t.evaluate(model.decode(c)) for c in (z, zp, zn))
        return float((pos - rec).mean()), float((rec - neg).mean()), float((pos > rec).float().mean()), float((neg < rec).float().mean())

    before = gaps()
    hist = train_contrast(model, x, r, spec, PlantedTarget(), tmp_path / "contrast", weight=200.0, epochs=4, items_per_epoch=96,
                          size=16, lr=3e-3, w_recon=1 / 768, w_kld=1e-2, batch_size=32)
    after = gaps()
    assert len(hist) == 4 and hist[-1]["contrast"] < hist[0]["contrast"]
    sd = float(r.std())
    assert after[0] > 0.2 * sd and after[1] > 0.2 * sd and after[2] >= 0.8 and after[3] >= 0.8, (before, after, sd)
    assert after[0] + after[1] > before[0] + before[1] + 0.4 * sd
    store = RunStore(tmp_path / "contrast" / "evaluations.sqlite")
    assert len(store.responses()) == 3 * 96 * 4 + 1  # three passes per item and epoch, plus the run's one returned code
    store.close()
    with pytest.raises(StimoptError, match="differentiable target"):
        train_contrast(model, x, r, spec, _FrozenRed(), tmp_path / "c2", epochs=1)
    with pytest.raises(StimoptError, match="activation prior"):
        train_contrast(model, x, r, std, PlantedTarget(), tmp_path / "c3", epochs=1)


@pytest.mark.slow
def test_fit_with_the_contrast_term_scores_its_passes_through_the_engine(tmp_path):
    """model.contrast in stimopt-fit: the phase runs after Algorithm 1, its target passes are on
    record in contrast/, and a recorded response table (nothing to score decoded images) is refused in one line."""
    from stimopt.fit import compose_fit, run_fit
    from stimopt.store import RunStore

    common = ["model=vislens_vae", "model.kind=image", "model.latent_dim=8", "model.image_size=16", "model.target_size=32",
              "model.n_images=24", "model.epochs=1", "model.lr=1e-3", "model.n_references=2", "model.target.model=resnet18",
              "model.target.weights=random", "model.target.layer=layer1", "model.target.input_size=32", "device=cpu",
              "model.contrast.weight=1", "model.contrast.epochs=2", "model.contrast.items=8", "model.batch_size=8"]
    rep = run_fit(compose_fit(common), tmp_path / "fit")
    assert rep["contrast"] == "1 x 2 epochs"
    store = RunStore(tmp_path / "fit" / "contrast" / "evaluations.sqlite")
    assert len(store.responses()) == 2 * 3 * 8 + 1
    store.close()
    imgs = torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    np.savez(tmp_path / "imgs.npz", images=(imgs.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
    np.savez(tmp_path / "resp.npz", responses=np.random.default_rng(0).normal(size=(20, 1)))
    with pytest.raises(StimoptError, match="model.contrast needs"):
        run_fit(compose_fit([*common, f"model.images={tmp_path / 'imgs.npz'}", f"model.responses={tmp_path / 'resp.npz'}",
                             "model.target_size=16"]), tmp_path / "bad")
