"""Vis-Lens end to end on CPU with tiny, randomly initialized models written by the test itself:
a tiny open_clip model (config + checkpoint file), a tiny SD1.5-shaped UNet/VAE/text encoder/
tokenizer saved with save_pretrained, and a tiny IP-Adapter file. Nothing here is pretrained."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from stimopt.errors import StimoptError

EMB = 32  # tiny CLIP embedding size (ViT-H-14's is 1024)


pytestmark = pytest.mark.usefixtures("one_thread")


def write_tiny_clip(tmp_path):
    import open_clip

    cfg = {"embed_dim": EMB, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    path = tmp_path / "tiny-vislens-clip.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-vislens-clip", pretrained=None)
    ckpt = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), ckpt)
    return "tiny-vislens-clip", str(ckpt)


def write_tiny_sd(tmp_path):
    """A tiny SD1.5-shaped img2img pipeline folder and an IP-Adapter folder (random weights)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    xattn = 32
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=xattn, attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=xattn, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1,
                                        vocab_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{f"{c}</w>": i + 2 for i, c in enumerate("abcdefghij")}}
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd = tmp_path / "sd15"
    pipe.save_pretrained(sd)
    # IP-Adapter: image projection (EMB -> 4 tokens of xattn) + to_k_ip/to_v_ip for every cross-attention layer.
    ip = {"image_proj": {"proj.weight": torch.randn(4 * xattn, EMB) * 0.02, "proj.bias": torch.zeros(4 * xattn),
                         "norm.weight": torch.ones(xattn), "norm.bias": torch.zeros(xattn)}, "ip_adapter": {}}
    key = 1
    outs = unet.config.block_out_channels
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = outs[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(outs))[int(name.split(".")[1])]
        else:
            hidden = outs[int(name.split(".")[1])]
        ip["ip_adapter"][f"{key}.to_k_ip.weight"] = torch.randn(hidden, xattn) * 0.02
        ip["ip_adapter"][f"{key}.to_v_ip.weight"] = torch.randn(hidden, xattn) * 0.02
        key += 2
    ipdir = tmp_path / "ip" / "models"
    ipdir.mkdir(parents=True)
    torch.save(ip, ipdir / "ip-adapter_sd15.bin")
    return str(sd), str(tmp_path / "ip")


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """A fitted CLIP-space landscape (tiny CLIP, random resnet18 unit) and the tiny SD folders."""
    from stimopt.fit import compose_fit, run_fit

    tmp = tmp_path_factory.mktemp("vislens_sd")
    clip_name, clip_ckpt = write_tiny_clip(tmp)
    sd, ip = write_tiny_sd(tmp)
    cfg = compose_fit([
        "model=vislens_vae", "model.kind=clip", f"model.clip.model={clip_name}", f"model.clip.pretrained={clip_ckpt}",
        "model.n_images=160", "model.image_size=32", "model.latent_dim=8", "model.epochs=3", "model.lr=1e-3",
        "model.n_references=4", "model.target.model=resnet18", "model.target.weights=random",
        "model.target.layer=layer2", "model.target.input_size=32", "device=cpu",
    ])
    report = run_fit(cfg, tmp / "fit")
    return {"tmp": tmp, "sd": sd, "ip": ip, "ckpt": report["checkpoint"], "report": report, "clip": (clip_name, clip_ckpt)}


def test_fit_writes_clip_landscape_with_cached_embeddings(tiny_world):
    rep = tiny_world["report"]
    assert rep["kind"] == "clip" and rep["latent_dim"] == 8
    assert (tiny_world["tmp"] / "fit" / "report.json").is_file()
    cached = list((tiny_world["tmp"] / "fit").glob("clip_tiny-vislens-clip-tiny_clip.pt_*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).shape == (160, EMB)
    assert 0.0 <= rep["val"]["separation_auc"] <= 1.0 and math.isfinite(rep["train"]["recon_mse"])
    assert "brainactiv_r2_train" in rep
    ck = torch.load(rep["checkpoint"], weights_only=True)
    assert ck["references"]["images"].dtype == torch.uint8 and len(ck["references"]["codes"]) == 4
    assert abs(float(ck["brainactiv"]["w"].norm()) - 1.0) < 1e-4


def _generator(world, **kw):
    from stimopt_plugins.vislens import VisLensGenerator

    return VisLensGenerator(checkpoint=world["ckpt"], sd_model=world["sd"], ip_adapter=world["ip"], steps=4, size=32,
                            device="cpu", **kw)


@pytest.fixture(scope="module")
def latent_gen(tiny_world):
    return _generator(tiny_world)


def test_vislens_generator_end_to_end_is_deterministic_and_embedding_driven(latent_gen):
    gen = latent_gen
    land = gen.space.landscape
    z = np.stack([land.reference_codes[0], land.mu_pos]).astype(np.float32)
    with torch.inference_mode():
        a = gen.generate(z)
        b = gen.generate(z)
    assert a.shape == (2, 3, 32, 32) and a.dtype == torch.float32
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert torch.allclose(a, b)  # fixed seed: a code maps to one image
    # Different embeddings -> different images (the IP-Adapter path is live).
    assert (a[0] - a[1]).abs().mean() > 1e-4


def test_vislens_runs_prior_shift_and_brainactiv(tiny_world, latent_gen, tmp_path):
    from stimopt_plugins.vislens import BrainActiv

    from stimopt.config import compose
    from stimopt.experiment import run_experiment

    common = ["logger=none", "budget=8", "batch_size=4", f"generator.checkpoint={tiny_world['ckpt']}",
              f"generator.sd_model={tiny_world['sd']}", f"generator.ip_adapter={tiny_world['ip']}", "generator.steps=3",
              "generator.size=32", "target.model=resnet18", "target.weights=random", "target.layer=layer2",
              "target.input_size=32", "device=cpu"]
    # Composed exactly as the CLI composes (Hydra groups shipped in conf/, registry lookup).
    s = run_experiment(compose(["generator=vislens", "optimizer=prior_shift", "optimizer.alphas=[0.0,1.0]", "direction=max",
                                *common]), tmp_path / "ps", progress=False)
    assert (tmp_path / "ps" / "summary.json").is_file() and (tmp_path / "ps" / "best.png").is_file()
    assert s["n_evaluations"] == 8 and set(s["optimizer_report"]["mean_score_by_alpha"]) == {"0", "1"}
    s = run_experiment(compose(["generator=vislens", "generator.code=clip", "optimizer=brainactiv", "direction=min", *common]),
                       tmp_path / "ba", progress=False)
    assert s["n_evaluations"] == 8 and s["optimizer_report"]["direction"] == "min"
    with pytest.raises(StimoptError, match="generator.code=clip"):
        BrainActiv().setup(latent_gen.space, seed=0, budget=8, batch_size=4)


def test_missing_weights_are_one_line_errors(tiny_world, tmp_path):
    from stimopt_plugins.vislens.clip import ClipEmbedder

    with pytest.raises(StimoptError, match=r"stable-diffusion-v1-5|Stable Diffusion weights not found at .*nowhere"):
        _generator(dict(tiny_world, sd=str(tmp_path / "nowhere")))
    with pytest.raises(StimoptError, match=r"IP-Adapter weights not found at .*ip-adapter_sd15.bin"):
        _generator(dict(tiny_world, ip=str(tmp_path / "noip")))
    with pytest.raises(StimoptError) as exc:
        ClipEmbedder("ViT-H-14", "laion2b_s32b_b79k")
    msg = str(exc.value)
    assert "\n" not in msg and "ViT-H-14/laion2b_s32b_b79k" in msg and "clip.pretrained=PATH" in msg
    with pytest.raises(StimoptError, match="does not exist"):
        _generator(dict(tiny_world, ckpt=str(tmp_path / "none.pt")))


def test_prior_shift_moves_a_planted_clip_response_both_ways(tiny_world):
    """CLIP VAE (tiny open_clip, random weights): the planted response is a fixed direction of the
    image's CLIP embedding; prior shift toward mu_pos / mu_neg moves the decoded embeddings' response
    up / down (read by the same direction: the decoded embedding is what the IP-Adapter renders)."""
    from types import SimpleNamespace

    from stimopt.natural import natural_crops
    from stimopt_plugins.vislens import Landscape, LatentSpace, PriorShift
    from stimopt_plugins.vislens.clip import ClipEmbedder
    from stimopt_plugins.vislens.vae import LinearVAE, PriorSpec, encode_means, landscape_report, train_vae

    emb = ClipEmbedder(*tiny_world["clip"], device="cpu")
    x = emb(natural_crops(360, 32, seed=3))
    w = torch.nn.functional.normalize(torch.randn(EMB, generator=torch.Generator().manual_seed(0)), dim=0)
    respond = lambda e: ((e - x.mean(0)) @ w).numpy()  # noqa: E731
    r = respond(x)
    train, val = slice(0, 320), slice(320, 360)
    spec = PriorSpec(latent_dim=8, prior_dims=4)  # the plugin's default prior otherwise
    spec.fit_normalization(r[train])
    vae = LinearVAE(EMB, 8)
    train_vae(vae, x[train], r[train], spec, epochs=60, lr=1e-2, batch_size=64, w_kld=10.0)
    assert landscape_report(vae, x[val], r[val], spec)["separation_auc"] > 0.8
    z = encode_means(vae, x[val]).numpy()
    land = Landscape(code="latent", prior="activation", reference_codes=z, mu_pos=spec.mu_pos.numpy(),
                     mu_neg=spec.mu_neg.numpy(), mask=spec.mask.numpy())
    with torch.no_grad():
        base = respond(vae.decode(torch.from_numpy(z)))
    for direction, sign in (("max", 1), ("min", -1)):
        opt = PriorShift(alphas=[0.5, 1.0])
        opt.setup(LatentSpace(dim=8, landscape=land), seed=0, budget=80, batch_size=80)
        opt.bind(SimpleNamespace(direction=direction))
        with torch.no_grad():
            moved = respond(vae.decode(torch.from_numpy(opt.ask(80))))
        for half in (moved[:40], moved[40:]):
            assert sign * (half.mean() - base.mean()) > 0.1 * r.std()
            assert (sign * (half - base) > 0).mean() >= 0.7


def write_tiny_ddpm(path):
    """A tiny unconditional DDPM folder (UNet2DModel + DDPMScheduler, random weights)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(str(path))
    return path


@pytest.mark.slow
def test_ddpm_refinement_of_the_image_vae_output(tmp_path):
    """Algorithm 3's post-processing: the presented image_vae images go through a DDPM (SDEdit);
    deterministic per code, stronger refinement moves the image further, a missing folder is one line."""
    from stimopt_plugins.vislens import ImageVAEGenerator
    from stimopt_plugins.vislens.diffusion import refine_ddpm
    from stimopt_plugins.vislens.vae import ConvVAE, PriorSpec, encode_means, save_landscape

    ddpm = write_tiny_ddpm(tmp_path / "ddpm")
    imgs = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    model = ConvVAE(16, 8)
    save_landscape(tmp_path / "vae.pt", model, PriorSpec(latent_dim=8, prior_dims=4), references={
        "images": (imgs * 255).round().to(torch.uint8), "codes": encode_means(model, imgs), "responses": torch.zeros(4), "embeddings": None})
    plain = ImageVAEGenerator(str(tmp_path / "vae.pt"), size=24, device="cpu")
    codes = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    base = plain.generate(codes)
    gen = ImageVAEGenerator(str(tmp_path / "vae.pt"), size=24, device="cpu", refine=str(ddpm), refine_strength=0.5, refine_steps=10)
    out = gen.generate(codes)
    assert out.shape == base.shape and float(out.min()) >= 0 and float(out.max()) <= 1 and not torch.equal(out, base)
    assert torch.equal(out, gen.generate(codes))  # fixed seed: one refined image per code
    assert torch.equal(gen.generate_torch(torch.from_numpy(codes)), base)  # gradient passes see the decoder output
    dist = {k: float((refine_ddpm(gen.refiner, base, strength=k, steps=10) - base).abs().mean()) for k in (0.1, 0.9)}
    assert 0 < dist[0.1] < dist[0.9]  # a later start moves the image further from the VAE's output
    assert torch.equal(refine_ddpm(gen.refiner, base, strength=0.0), base)
    with pytest.raises(StimoptError, match="DDPM weights not found"):
        ImageVAEGenerator(str(tmp_path / "vae.pt"), size=24, device="cpu", refine=str(tmp_path / "nope"))
