"""Diffusion core: network round trip, EDM identities, training (resume, NaN), sampling, latents."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trichotomy_lib.diffusion.edm import denoise, edm_loss, loss_weight, preconditioning, sample_sigma
from trichotomy_lib.diffusion.ema import ema_beta
from trichotomy_lib.diffusion.network import Denoiser
from trichotomy_lib.diffusion.sampler import edm_sigmas, guided_denoiser, network_evaluations, sample
from trichotomy_lib.analysis.diffusion import sample_images
from trichotomy_lib.diffusion.train import TrainingDiverged, check_hyperparameters, train_denoiser, training_precision

TINY = dict(sample_size=16, channels=(8, 16), norm_groups=4, head_dim=8)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return Denoiser(**{**TINY, **kw})


def randomise(net, seed=1, std=0.05):
    """Give the zero-initialised output layers weights, so the network output is not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return net.eval()


def blobs(n=24, size=16, seed=0):
    """Synthetic training images in [-1, 1]: a bright disc whose position depends on the label."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, 8)
    labels[torch.arange(n), torch.arange(n) % 8] = 1
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cls = torch.arange(n) % 8
    cy, cx = 4 + (cls // 4) * 8, 2 + (cls % 4) * 4
    disc = ((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2 < 9).float()
    images = (disc * 1.6 - 0.8 + 0.1 * torch.randn(n, size, size, generator=g)).clamp(-1, 1)[:, None]
    return images, labels, torch.randn(n, 12, generator=g)


# ---------------------------------------------------------------------------- network
def test_save_load_round_trip(tmp_path):
    net = randomise(tiny(label_dim=8, embed_dim=12))
    net.save_pretrained(tmp_path / "m", safe_serialization=True)
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").exists()
    loaded = Denoiser.from_pretrained(tmp_path / "m", use_safetensors=True).eval()
    assert list(loaded.config.channels) == list(net.config.channels) and loaded.config.embed_dim == 12
    x, c = torch.randn(3, 1, 16, 16), torch.randn(3)
    lab, emb = torch.eye(8)[:3], torch.randn(3, 12)
    with torch.no_grad():
        assert torch.equal(net(x, c, lab, emb), loaded(x, c, lab, emb))


def test_condition_shapes_and_errors():
    net = tiny(label_dim=8, embed_dim=12).eval()
    x, c = torch.randn(2, 1, 16, 16), torch.randn(2)
    assert net(x, c).shape == (2, 1, 16, 16)
    assert net(x, c, torch.eye(8)[:2], torch.randn(2, 12)).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 8\).*\(2, 7\)"):
        net(x, c, torch.ones(2, 7))
    with pytest.raises(ValueError, match=r"embedding must have shape \(2, 12\)"):
        net(x, c, None, torch.ones(3, 12))
    with pytest.raises(ValueError, match="no labels input"):
        tiny()(x, c, torch.eye(8)[:2])
    with pytest.raises(ValueError, match=r"x must be \(N, 1, H, W\)"):
        net(torch.randn(2, 3, 16, 16), c)
    with pytest.raises(ValueError, match="divisible"):
        Denoiser(sample_size=30, channels=(8, 16))


def test_embedding_is_normalised_and_dropped_embedding_is_unconditional():
    net = randomise(tiny(embed_dim=12))
    x, c, e = torch.randn(2, 1, 16, 16), torch.randn(2), torch.randn(2, 12)
    with torch.no_grad():
        assert torch.allclose(net(x, c, None, e), net(x, c, None, 7.0 * e), atol=1e-5)   # scale-free (L2 × sqrt(D))
        assert torch.allclose(net(x, c, None, torch.zeros(2, 12)), net(x, c), atol=1e-6)  # zeros = dropped
        assert not torch.allclose(net(x, c, None, e), net(x, c), atol=1e-4)


# ---------------------------------------------------------------------------- EDM
def test_preconditioning_formulas():
    sigma, sd = torch.tensor([0.002, 0.5, 3.0, 80.0], dtype=torch.float64), 0.5
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, sd)
    assert torch.allclose(c_skip, sd**2 / (sigma**2 + sd**2))
    assert torch.allclose(c_out, sigma * sd / torch.sqrt(sigma**2 + sd**2))
    assert torch.allclose(c_in, 1 / torch.sqrt(sigma**2 + sd**2))
    assert torch.allclose(c_noise, torch.log(sigma) / 4)
    # the noisy input c_in·(y + σn) has unit variance for Var(y) = σ_data²
    assert torch.allclose(c_in**2 * (sd**2 + sigma**2), torch.ones_like(sigma))
    # at σ = σ_data skip and output are balanced: c_skip = 1/2, c_out = σ_data/√2
    assert math.isclose(float(c_skip[1]), 0.5) and math.isclose(float(c_out[1]), sd / math.sqrt(2))


def test_denoiser_is_identity_at_small_sigma_and_skip_at_large():
    net = randomise(tiny())
    x = torch.randn(2, 1, 16, 16) * 0.5
    with torch.no_grad():
        assert torch.allclose(denoise(net, x, 1e-4), x, atol=1e-3)          # c_skip → 1, c_out → 0
        d = denoise(net, x * 1000, 1000.0)                                 # c_skip → 0: D ≈ c_out·F, bounded
        assert d.abs().max() < 50 and not torch.allclose(d, x * 1000 * 0.25e-6, atol=1e-3)


def test_loss_weighting_and_sigma_distribution():
    sigma = torch.tensor([0.01, 0.5, 2.0, 50.0], dtype=torch.float64)
    lam = loss_weight(sigma, 0.5)
    assert torch.allclose(lam, (sigma**2 + 0.25) / (sigma * 0.5) ** 2)
    _, c_out, _, _ = preconditioning(sigma, 0.5)
    assert torch.allclose(lam * c_out**2, torch.ones_like(sigma))  # λ = 1/c_out²: unit effective weight
    s = sample_sigma(200_000, -1.2, 1.2, torch.Generator().manual_seed(0))
    assert abs(s.log().mean() + 1.2) < 0.02 and abs(s.log().std() - 1.2) < 0.02
    # a zero-output net on N(0, σ_data²) data is the optimal denoiser: expected loss = λ·c_out²... = 1
    net = tiny()
    y = torch.randn(4096, 1, 16, 16) * 0.5
    sig = torch.full((4096,), 1.3)
    with torch.no_grad():
        loss = edm_loss(net, y, sig, torch.randn_like(y)).mean()
    assert abs(float(loss) - 1.0) < 0.02


def test_ema_beta():
    assert math.isclose(ema_beta(64, 10**9, 640, None), 0.5 ** 0.1)
    assert math.isclose(ema_beta(64, 64, 10_000, 0.1), 0.5**10)  # ramp-up: h = 0.1·64 images, forget the init fast
    assert ema_beta(64, 10**7, 10_000, 0.1) == 0.5 ** (64 / 10_000)


# ---------------------------------------------------------------------------- training
HP = dict(steps=6, batch_size=8, lr=1e-3, lr_warmup_steps=2, checkpoint_every=3, ema_halflife_images=50,
          ema_rampup=None, guide_step=2, label_dropout=0.3, embed_dropout=0.3)


def test_resume_gives_identical_weights(tmp_path):
    images, labels, emb = blobs()
    straight = train_denoiser(tiny(label_dim=8, embed_dim=12), images, tmp_path / "a", HP, labels, emb, seed=3, progress=False)
    assert straight["finished"] and len(straight["log"]["loss"]) == 6
    half = train_denoiser(tiny(label_dim=8, embed_dim=12), images, tmp_path / "b", HP, labels, emb, seed=3, progress=False,
                          stop_at_step=3)  # "killed" after the step-3 checkpoint
    assert not half["finished"]
    resumed = train_denoiser(tiny(seed=99, label_dim=8, embed_dim=12), images, tmp_path / "b", HP, labels, emb, seed=3,
                             progress=False)  # a fresh process: different init, state comes from the checkpoint
    for key in ("net", "ema", "guide"):
        a, b = straight[key].state_dict(), resumed[key].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), key
    assert straight["log"] == resumed["log"]
    assert not all(torch.equal(straight["ema"].state_dict()[k], straight["net"].state_dict()[k]) for k in a)
    assert (tmp_path / "b" / "train_log.csv").read_text().count("\n") == 7
    assert not list((tmp_path / "b" / "checkpoints").rglob("*.pt")) and not list((tmp_path / "b").rglob("*.pkl"))


def test_training_precision_is_resolved_recorded_and_used(tmp_path, monkeypatch):
    from trichotomy_lib import device as device_mod

    monkeypatch.setattr(device_mod, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert training_precision("auto", "cpu") == "bf16" and training_precision("no", "cpu") == "fp32"
    assert training_precision("fp16", "cpu") == "fp32"  # fp16 is a GPU mode
    monkeypatch.setattr(device_mod, "_cpu_flags", lambda: frozenset({"avx2"}))
    assert training_precision("auto", "cpu") == "fp32" and training_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match=r"train\.mixed_precision must be one of"):
        check_hyperparameters({"mixed_precision": "half"})
    images, labels, emb = blobs()
    hp = {**HP, "guide_step": None}
    runs = {mp: train_denoiser(tiny(label_dim=8, embed_dim=12), images, tmp_path / mp, {**hp, "mixed_precision": mp},
                               labels, emb, seed=3, progress=False) for mp in ("no", "bf16")}
    again = train_denoiser(tiny(label_dim=8, embed_dim=12), images, tmp_path / "again", {**hp, "mixed_precision": "bf16"},
                           labels, emb, seed=3, progress=False)
    assert runs["no"]["precision"] == "fp32" and runs["bf16"]["precision"] == "bf16"
    w = {mp: r["net"].state_dict() for mp, r in runs.items()}
    assert not all(torch.equal(w["no"][k], w["bf16"][k]) for k in w["no"])  # the step really ran in bf16
    assert all(torch.equal(again["net"].state_dict()[k], w["bf16"][k]) for k in w["bf16"])  # and deterministically
    assert all(v.dtype == torch.float32 for v in w["bf16"].values())  # weights stay fp32
    assert np.allclose(runs["no"]["log"]["loss"][0], runs["bf16"]["log"]["loss"][0], rtol=0.05)


def test_nan_loss_stops_with_clear_message(tmp_path):
    images, _, _ = blobs()
    images[5] = float("nan")
    hp = {**HP, "steps": 50, "label_dropout": 0.0, "embed_dropout": 0.0, "guide_step": None}
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step \d+.*diffusion.train.lr"):
        train_denoiser(tiny(), images, tmp_path, hp, progress=False)


def test_training_hyperparameter_and_data_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown training hyperparameter"):
        check_hyperparameters({"step": 3})
    with pytest.raises(ValueError, match="guide_step"):
        check_hyperparameters({"steps": 3, "guide_step": 9})
    images, labels, _ = blobs()
    with pytest.raises(ValueError, match="no labels were given"):
        train_denoiser(tiny(label_dim=8), images, tmp_path, HP, progress=False)
    with pytest.raises(ValueError, match=r"training images must be \(N, 1, 16, 16\)"):
        train_denoiser(tiny(), images[:, :, :8], tmp_path, HP, progress=False)


def test_embed_noise_trains_on_the_sampling_time_condition(tmp_path, monkeypatch):
    """embed_noise = σ: the network is trained on sqrt(D)·(e + σn)/‖e + σn‖ (the condition DiADM
    samples with), a fresh n every step; σ = 0 passes the embeddings through unchanged."""
    from trichotomy_lib.diffusion import train as train_mod

    images, labels, emb = blobs()
    emb = emb / emb.norm(dim=1, keepdim=True) * math.sqrt(emb.shape[1])
    seen, real_loss = [], train_mod.edm_loss

    def spy(model, y, sigma, noise, lab, e, sigma_data):
        seen.append(e.clone())
        return real_loss(model, y, sigma, noise, lab, e, sigma_data)

    monkeypatch.setattr(train_mod, "edm_loss", spy)
    hp = {**HP, "guide_step": None, "embed_dropout": 0.0}
    runs = {}
    for sigma in (0.0, 2.0):
        seen.clear()
        runs[sigma] = train_denoiser(tiny(label_dim=8, embed_dim=12), images, tmp_path / str(sigma),
                                     {**hp, "embed_noise": sigma}, labels, emb, seed=3, progress=False)
        runs[sigma]["seen"] = torch.cat(seen)
    clean, noised = runs[0.0]["seen"], runs[2.0]["seen"]
    assert any(torch.equal(clean[0], e) for e in emb)                        # σ = 0: the embeddings as they are
    assert torch.allclose(noised.norm(dim=1), torch.full((len(noised),), math.sqrt(12)), atol=1e-4)
    assert not any(torch.allclose(noised[0], e, atol=1e-3) for e in emb)     # σ = 2: never the clean embedding
    first = HP["batch_size"]                                                # step 0 draws the same images in both runs
    cos = torch.nn.functional.cosine_similarity(noised[:first], clean[:first], dim=1)
    assert 0.25 < float(cos.mean()) < 0.65                                   # E cos ≈ 1/sqrt(1 + σ²) = 0.45
    a, b = runs[0.0]["net"].state_dict(), runs[2.0]["net"].state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)
    # one embedding for every image: a fresh draw per sample and step makes every seen condition distinct
    seen.clear()
    same = emb[:1].expand_as(emb).clone()
    train_denoiser(tiny(label_dim=8, embed_dim=12), images, tmp_path / "same", {**hp, "embed_noise": 2.0},
                   labels, same, seed=3, progress=False)
    drawn = torch.cat(seen)
    assert len(drawn) > HP["batch_size"] and torch.cdist(drawn, drawn).add(torch.eye(len(drawn))).min() > 1e-3
    # a dropped condition stays zero (unconditional), not pure noise
    seen.clear()
    train_denoiser(tiny(label_dim=8, embed_dim=12), images, tmp_path / "dropped",
                   {**hp, "embed_noise": 2.0, "embed_dropout": 1.0}, labels, emb, seed=3, progress=False)
    assert torch.equal(torch.cat(seen), torch.zeros_like(torch.cat(seen)))
    for bad in (-1.0, "2", True, math.inf, math.nan):
        with pytest.raises(ValueError, match="train.embed_noise"):
            check_hyperparameters({"embed_noise": bad})


def test_training_reduces_loss(tmp_path):
    images, labels, emb = blobs(64)
    hp = {**HP, "steps": 40, "batch_size": 16, "lr": 3e-3, "checkpoint_every": 40, "guide_step": None}
    log = train_denoiser(tiny(label_dim=8), images, tmp_path, hp, labels, progress=False)["log"]
    assert np.isfinite(log["loss"]).all() and np.mean(log["loss"][-10:]) < 0.8 * np.mean(log["loss"][:10])


# ---------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("solver", ["heun", "dpm"])
def test_samplers_converge_to_the_gaussian_ode_solution_at_second_order(solver):
    """A zero-output network is the exact denoiser of N(0, σ_data²) data, whose probability-flow ODE
    maps x(σ_max) to x(0) = x(σ_max)·σ_data/sqrt(σ_max² + σ_data²). Both solvers are 2nd order:
    doubling the steps cuts the error about 4×."""
    net = tiny().eval()
    noise = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    exact = noise * 80 * 0.5 / math.sqrt(80**2 + 0.25)
    err = {n: float((sample(net, None, [5], steps=n, solver=solver, clamp=False) - exact).abs().max() / exact.abs().max())
           for n in (32, 64)}
    assert err[64] < 0.006 and err[32] / err[64] > 3.5, err


def test_sigma_schedule():
    t = edm_sigmas(32)
    assert len(t) == 33 and t[-1] == 0 and math.isclose(float(t[0]), 80) and math.isclose(float(t[-2]), 0.002)
    assert (t[:-1] > t[1:]).all()
    assert network_evaluations(32, "heun") == 63 and network_evaluations(16, "dpm", 1.4) == 32


@pytest.mark.parametrize("solver", ["heun", "dpm"])
def test_per_sample_seeds_do_not_depend_on_batching(solver):
    net = randomise(tiny(label_dim=8, embed_dim=12))
    cond = {"labels": torch.eye(8)[[0, 1, 2, 3, 4, 5]], "embedding": torch.randn(6, 12)}
    seeds = [11, 12, 13, 14, 15, 16]
    kw = dict(steps=4, guidance=1.5, solver=solver)
    whole = sample(net, cond, seeds, batch_size=6, **kw)
    split = sample(net, cond, seeds, batch_size=4, **kw)  # batches of 4 + 2
    assert torch.equal(whole, split)
    parts = torch.cat([sample(net, {k: v[:2] for k, v in cond.items()}, seeds[:2], **kw),
                       sample(net, {k: v[2:] for k, v in cond.items()}, seeds[2:], **kw)])
    assert torch.equal(whole, parts)
    single = sample(net, {k: v[3:4] for k, v in cond.items()}, seeds[3:4], **kw)
    assert torch.equal(whole[3:4], single)
    assert not torch.equal(whole[0], whole[1])
    assert whole.min() >= -1 and whole.max() <= 1


def test_bf16_sampling_is_batch_independent_and_close_to_fp32():
    """The network under bf16 autocast, the rest in float32: a deterministic function of the seed
    (any batching), a different one from fp32, and near it."""
    net = randomise(tiny(label_dim=8, embed_dim=12))
    cond = {"labels": torch.eye(8)[[0, 1, 2, 3, 4, 5]], "embedding": torch.randn(6, 12)}
    seeds = [11, 12, 13, 14, 15, 16]
    kw = dict(steps=4, guidance=1.5, solver="dpm")
    whole = sample(net, cond, seeds, batch_size=6, precision="bf16", **kw)
    assert whole.dtype == torch.float32
    assert torch.equal(whole, sample(net, cond, seeds, batch_size=4, precision="bf16", **kw))
    assert torch.equal(whole[3:4], sample(net, {k: v[3:4] for k, v in cond.items()}, seeds[3:4], precision="bf16", **kw))
    fp32 = sample(net, cond, seeds, batch_size=6, **kw)
    assert not torch.equal(whole, fp32)
    assert (whole - fp32).abs().mean() < 0.02 * fp32.std()
    assert torch.equal(sample(net, cond, seeds, precision=device_precision("auto"), **kw),
                       sample(net, cond, seeds, precision="auto", **kw))
    with pytest.raises(ValueError, match="sampler precision='half'"):
        sample(net, cond, seeds, precision="half", **kw)


def device_precision(p):
    from trichotomy_lib.device import resolve_precision

    return resolve_precision(p, "cpu")


def test_guidance():
    net = randomise(tiny(label_dim=8))
    guide = randomise(tiny(label_dim=8), seed=7)
    x, lab = torch.randn(3, 1, 16, 16), torch.eye(8)[:3]
    with torch.no_grad():
        cond = denoise(net, x, 2.0, lab)
        D1 = guided_denoiser(net, lab, None, 1.0, guide)
        assert torch.equal(D1(x, 2.0), cond) and D1.nfe == 1          # w = 1: the guide is not evaluated
        D0 = guided_denoiser(net, lab, None, 0.0)
        assert torch.allclose(D0(x, 2.0), denoise(net, x, 2.0))        # w = 0: the unconditional mode
        D2 = guided_denoiser(net, lab, None, 2.0, guide)
        g = denoise(guide, x, 2.0, lab)
        assert torch.allclose(D2(x, 2.0), g + 2.0 * (cond - g), atol=1e-6) and D2.nfe == 2  # autoguidance
    a = sample(net, {"labels": lab}, [1, 2, 3], steps=3, guidance=1.0, guide_net=guide)
    b = sample(net, {"labels": lab}, [1, 2, 3], steps=3, guidance=1.0)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"labels must have shape \(3, 8\)"):
        sample(net, {"labels": torch.eye(8)[:2]}, [1, 2, 3], steps=3)
    with pytest.raises(ValueError, match="cond keys"):
        sample(net, {"label": lab}, [1, 2, 3], steps=3)


def test_label_guidance_is_the_two_scale_formula():
    """D = D(∅) + w·(D(e) − D(∅)) + w_y·(D(e, y) − D(e)); w_y = w is one-scale guidance."""
    net = randomise(tiny(label_dim=8, embed_dim=12))
    x, lab, emb = torch.randn(3, 1, 16, 16), torch.eye(8)[:3], torch.randn(3, 12)
    with torch.no_grad():
        d_ey, d_e, d_0 = denoise(net, x, 2.0, lab, emb), denoise(net, x, 2.0, None, emb), denoise(net, x, 2.0)
        assert not torch.allclose(d_ey, d_e, atol=1e-4)  # the labels change the prediction
        D = guided_denoiser(net, lab, emb, 1.5, None, label_guidance=4.0)
        assert torch.allclose(D(x, 2.0), d_0 + 1.5 * (d_e - d_0) + 4.0 * (d_ey - d_e), atol=1e-5) and D.nfe == 3
        D = guided_denoiser(net, lab, emb, 1.0, None, label_guidance=4.0)  # w = 1: no unconditional evaluation
        assert torch.allclose(D(x, 2.0), d_e + 4.0 * (d_ey - d_e), atol=1e-5) and D.nfe == 2
        guide = randomise(tiny(label_dim=8, embed_dim=12), seed=7)  # autoguidance: the guide given e alone
        g_e = denoise(guide, x, 2.0, None, emb)
        D = guided_denoiser(net, lab, emb, 1.5, guide, label_guidance=4.0)
        assert torch.allclose(D(x, 2.0), g_e + 1.5 * (d_e - g_e) + 4.0 * (d_ey - d_e), atol=1e-5)
        same = guided_denoiser(net, lab, emb, 1.5, None, label_guidance=1.5)(x, 2.0)
        assert torch.allclose(same, guided_denoiser(net, lab, emb, 1.5)(x, 2.0), atol=1e-5)
    kw = dict(steps=3, guidance=1.5, solver="dpm")
    cond = {"labels": lab, "embedding": emb}
    assert not torch.equal(sample(net, cond, [1, 2, 3], label_guidance=4.0, **kw), sample(net, cond, [1, 2, 3], **kw))
    assert network_evaluations(10, "dpm", 1.5, 4.0) == 30 and network_evaluations(10, "dpm", 1.0, 4.0) == 20
    with pytest.raises(ValueError, match="label_guidance needs both labels and embedding"):
        sample(net, {"labels": lab}, [1, 2, 3], label_guidance=4.0, **kw)
    with pytest.raises(ValueError, match="label_guidance must be >= 0"):
        sample(net, cond, [1, 2, 3], label_guidance=-1.0, **kw)


# ---------------------------------------------------------------------------- latents
def test_latent_codec_round_trip(tmp_path):
    from diffusers import AutoencoderKL

    from trichotomy_lib.diffusion.latent import LatentCodec, load_vae

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
                        latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=16)
    vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    vae = load_vae(tmp_path / "vae")
    images, _, _ = blobs(10)
    codec = LatentCodec(vae)
    z = codec.fit(codec.encode_raw(images, batch_size=4)).encode(images, batch_size=3)
    assert z.shape == (10, 4, 8, 8)
    assert torch.allclose(z.std(dim=(0, 2, 3)), torch.full((4,), 0.5), atol=1e-4)   # per-channel std = σ_data
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5)
    raw = codec.encode_raw(images)
    assert torch.allclose(codec.denormalise(codec.normalise(raw)), raw, atol=1e-5)
    codec.save(tmp_path / "stats.json")
    again = LatentCodec.load(vae, tmp_path / "stats.json")
    assert torch.allclose(again.encode(images), z, atol=1e-5)
    x = again.decode(z)
    assert x.shape == (10, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    with torch.no_grad():  # decode = VAE decoder of the de-normalised latent, RGB averaged to grey
        direct = vae.decode(raw).sample.mean(1, keepdim=True).clamp(-1, 1)
    assert torch.allclose(x, direct, atol=1e-4)
    with pytest.raises(FileNotFoundError, match="AutoencoderKL"):
        load_vae(tmp_path / "missing")


# ---------------------------------------------------------------------------- stage
def pipeline_on_blobs(cfg: dict, images, labels, emb):
    """A Pipeline whose 'data' and 'encoder' stages are the blobs, written by hand (no upstream compute)."""
    from trichotomy_lib.data.imageset import ImageSet
    from trichotomy_lib.io import atomic_write_json
    from trichotomy_lib.pipeline import Pipeline

    pipe = Pipeline(cfg, verbose=False)
    u8 = ((images[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    ImageSet(u8, labels.numpy().astype(np.uint8), np.array([f"p{i // 2}" for i in range(len(u8))]),
             np.array([f"s{i}" for i in range(len(u8))])).save(pipe.path("data") / "train")
    atomic_write_json(pipe.path("data") / "config.json", {})
    pipe.path("encoder").mkdir(parents=True)
    np.save(pipe.path("encoder") / "embeddings_train.npy", emb.numpy())
    atomic_write_json(pipe.path("encoder") / "config.json", {})
    return pipe


def test_stage_trains_saves_and_samples_every_mode(tmp_path):
    """The ``diffusion`` stage on a tiny cached 'data' + 'encoder' (written by hand, no upstream compute)."""
    from trichotomy_lib.config import ConfigError
    from trichotomy_lib.stages import diffusion as dstage

    images, labels, emb = blobs(16)
    cfg = {"profile": "t", "seed": 1, "run_root": str(tmp_path), "data": {"image_size": 16},
           "diffusion": {"preset": "smoke", "network": {"channels": [8, 16], "norm_groups": 4, "head_dim": 8},
                         "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "guide_step": 2},
                         "sampler": {"steps": 3}}}
    pipe = pipeline_on_blobs(cfg, images, labels, emb)

    for mode in ("uncond", "class", "pseudo"):
        assert dstage.load_denoiser(pipe, mode).config.label_dim == 8  # the joint network serves every mode
    assert dstage.load_denoiser(pipe, which="guide").config.embed_dim == 12
    assert len(dstage.load_train_log(pipe)["loss"]) == 4
    out = pipe.path("diffusion") / "joint"
    assert (out / "ema" / "diffusion_pytorch_model.safetensors").exists() and not (out / "checkpoints").exists()
    x = sample_images(pipe, "class", [1, 2], labels=np.eye(8, dtype=np.float32)[:2], guidance=1.5)
    y = sample_images(pipe, "class", [2], labels=np.eye(8, dtype=np.float32)[1:2], guidance=1.5)
    assert x.shape == (2, 1, 16, 16) and torch.equal(x[1:], y)
    with pytest.raises(ValueError, match="needs embedding"):
        sample_images(pipe, "pseudo", [1])

    # generate.condition_labels: DiADM's condition holds the source's labels beside its embedding
    from trichotomy_lib.config import deep_merge
    from trichotomy_lib.pipeline import Pipeline
    from trichotomy_lib.stages.generate import make_sample_fn

    with_labels = Pipeline(deep_merge(cfg, {"generate": {"condition_labels": True}}), verbose=False)
    rows, seeds_ = np.array([3, 0]), np.array([5, 6])
    plain = make_sample_fn(pipe, "pseudo", emb.numpy())(rows, seeds_, 1.0)
    both = make_sample_fn(with_labels, "pseudo", emb.numpy())(rows, seeds_, 1.0)
    g = with_labels.cfg["generate"]
    direct = sample(dstage.load_denoiser(pipe, "pseudo"), {"embedding": emb[rows], "labels": torch.as_tensor(labels[rows])},
                    seeds_, steps=g["steps"], guidance=1.0, solver=g["solver"], precision=g["precision"])
    assert torch.equal(both, direct) and not torch.equal(both, plain)  # the training row's labels, given
    # the paper's condition overrides the profile's: the clean embedding alone
    noisy = Pipeline(deep_merge(cfg, {"generate": {"condition_labels": True, "condition_noise": 2.0}}), verbose=False)
    assert not torch.equal(make_sample_fn(noisy, "pseudo", emb.numpy())(rows, seeds_, 1.0), both)
    assert torch.equal(make_sample_fn(noisy, "pseudo", emb.numpy(), condition_noise=0.0,
                                      condition_labels=False)(rows, seeds_, 1.0), plain)
    # generate.precision: the releases' sampler runs the network in that precision
    fp32 = make_sample_fn(Pipeline(deep_merge(cfg, {"generate": {"condition_labels": True, "precision": "fp32"}}),
                                   verbose=False), "pseudo", emb.numpy())(rows, seeds_, 1.0)
    assert torch.equal(fp32, sample(dstage.load_denoiser(pipe, "pseudo"), {"embedding": emb[rows], "labels": torch.as_tensor(labels[rows])},
                                    seeds_, steps=g["steps"], guidance=1.0, solver=g["solver"], precision="fp32"))
    with pytest.raises(ConfigError, match="generate.precision must be one of"):
        Pipeline(deep_merge(cfg, {"generate": {"precision": "fp16"}}), verbose=False)
    with pytest.raises(ConfigError, match="diffusion.sampler.precision must be one of"):
        dstage.diffusion_config({"diffusion": {"sampler": {"precision": "half"}}})
    with pytest.raises(ConfigError, match="condition_labels must be true or false"):
        Pipeline(deep_merge(cfg, {"generate": {"condition_labels": "yes"}}), verbose=False)
    # generate.label_guidance: the labels' own scale, through the release sampler
    guided = Pipeline(deep_merge(cfg, {"generate": {"condition_labels": True, "label_guidance": 3.0}}), verbose=False)
    assert torch.equal(make_sample_fn(guided, "pseudo", emb.numpy())(rows, seeds_, 1.0),
                       sample(dstage.load_denoiser(pipe, "pseudo"), {"embedding": emb[rows], "labels": torch.as_tensor(labels[rows])},
                              seeds_, steps=g["steps"], guidance=1.0, solver=g["solver"], precision=g["precision"],
                              label_guidance=3.0))
    assert torch.allclose(make_sample_fn(guided, "pseudo", emb.numpy(), label_guidance=1.0)(rows, seeds_, 1.0), both,
                          atol=1e-4)  # w_y = w = 1: plain conditional sampling, up to float rounding
    assert torch.equal(make_sample_fn(guided, "pseudo", emb.numpy(), condition_labels=False)(rows, seeds_, 1.0), plain)
    # without the labels there is nothing to guide: the key is ignored
    assert torch.equal(make_sample_fn(Pipeline(deep_merge(cfg, {"generate": {"label_guidance": 3.0}}), verbose=False),
                                      "pseudo", emb.numpy())(rows, seeds_, 1.0), plain)
    with pytest.raises(ConfigError, match="label_guidance must be null or a number >= 0"):
        Pipeline(deep_merge(cfg, {"generate": {"condition_labels": True, "label_guidance": -2}}), verbose=False)
    with pytest.raises(ConfigError, match="diffusion.models"):
        dstage.diffusion_config({"diffusion": {"models": ["joint", "class"]}})
    with pytest.raises(ConfigError, match="diffusion.typo"):
        dstage.diffusion_config({"diffusion": {"typo": 1}})


def test_the_paper_path_separate_models_in_latent_space(tmp_path):
    """The paper profile's generator path on the CPU: separate uncond / class / pseudo models on
    latents of a (tiny, project-trained shape) AutoencoderKL, the uncond model as the guide, and
    samples decoded to pixels — through the stage and the release sampler."""
    from diffusers import AutoencoderKL

    import trichotomy_lib.stages  # noqa: F401
    from trichotomy_lib.stages import diffusion as dstage
    from trichotomy_lib.stages.generate import make_sample_fn

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                  up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
                  latent_channels=4, norm_num_groups=4, layers_per_block=1,
                  sample_size=16).save_pretrained(tmp_path / "vae", safe_serialization=True)
    images, labels, emb = blobs(16)
    cfg = {"profile": "t", "seed": 1, "run_root": str(tmp_path), "data": {"image_size": 16},
           "diffusion": {"preset": "smoke", "models": ["uncond", "class", "pseudo"], "vae_path": str(tmp_path / "vae"),
                         "network": {"channels": [8, 16], "norm_groups": 4, "head_dim": 8, "patch_size": 1},
                         "train": {"steps": 2, "batch_size": 8, "checkpoint_every": 2, "guide_step": 1}},
           "generate": {"steps": 2, "batch_size": 3}}
    pipe = pipeline_on_blobs(cfg, images, labels, emb)

    models = dstage.trained_models(pipe)["models"]
    assert sorted(models) == ["class", "pseudo", "uncond"]
    assert models["uncond"]["network"]["in_channels"] == 4 and models["pseudo"]["network"]["embed_dim"] == 12
    assert dstage.load_denoiser(pipe, "class").config.embed_dim == 0       # separate networks, one input each
    assert dstage.load_guide(pipe, "pseudo", "uncond").config.label_dim == 0   # the paper's guide: the uncond model
    assert dstage.load_codec(pipe) is not None
    from trichotomy_lib.config import ConfigError, deep_merge
    from trichotomy_lib.pipeline import Pipeline

    with pytest.raises(ConfigError, match="condition_labels.*no label input"):  # separate models: no label input
        make_sample_fn(Pipeline(deep_merge(cfg, {"generate": {"condition_labels": True}}), verbose=False), "pseudo",
                       emb.numpy())
    fn = make_sample_fn(pipe, "pseudo", emb.numpy())
    x = fn(np.array([0, 1, 2]), np.array([5, 6, 7]), 1.4)
    assert x.shape == (3, 1, 16, 16) and x.min() >= -1 and x.max() <= 1   # decoded to pixels
    assert torch.allclose(fn(np.array([1]), np.array([6]), 1.4), x[1:2], atol=1e-5)  # per-sample seeds: batch independent
