"""The spacetime tokenizer: shapes, causality, the quantizer, every loss term, metrics, a tiny run, bad input."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from usam.artifacts.layout import Layout
from usam.config import compose
from usam.data import build_dataset, preprocess_dataset
from usam.errors import ConfigError, UsamError
from usam.media import video_metrics as vm
from usam.media.perceptual import DOMAIN_LABEL, DomainDistance, LpipsDistance
from usam.models.bsq import MultiScaleBSQ, ScaleSchedule
from usam.models.evaluators import FrameClassifier
from usam.models.tokenizer import SpacetimeTokenizer, latent_frames
from usam.train.tasks import make_task
from usam.train.tokenizer_task import hinge_critic_loss, hinge_generator_loss, low_resolution

SMALL = dict(bits=8, base_channels=8, res_blocks=1, spatial_down=4, temporal_down=2, scales=(1, 2, 4, 8))
TINY_TOKENIZER = [
    "tokenizer.arch.base_channels=8", "tokenizer.quantizer.bits=8", "tokenizer.train.batch_size=4",
    "tokenizer.loss.perceptual.weight=0", "tokenizer.eval.panel_videos=2",
]


def _video(b=2, t=8, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, 32, 32, generator=g) * 2 - 1


# ---- shapes and causality -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("frames", [1, 5, 8, 9])
@pytest.mark.parametrize("fusion", ["conv", "attention"])
def test_shapes_for_odd_and_even_frame_counts(frames, fusion):
    torch.manual_seed(0)
    model = SpacetimeTokenizer(**SMALL, temporal_fusion=fusion).eval()
    out = model(_video(t=frames))
    t_lat = 1 + -(-(frames - 1) // 2)
    assert latent_frames(frames, 2) == t_lat
    assert out.recon.shape == (2, 3, frames, 32, 32)
    assert out.latent.shape == (2, 8, t_lat, 8, 8)
    schedule = out.quant.schedule
    assert schedule.segments == ([(0, 1)] + ([(1, t_lat - 1)] if t_lat > 1 else []))
    assert [tuple(c.shape) for c in out.quant.codes] == [(2, 8, s.frames, s.side, s.side) for s in schedule.stages]


def test_the_per_frame_ablation_keeps_every_frame_and_never_mixes_them():
    torch.manual_seed(0)
    model = SpacetimeTokenizer(**{**SMALL, "temporal_down": 1}, temporal_fusion="off").eval()
    x = _video(t=6)
    y = x.clone()
    y[:, :, 3] = -y[:, :, 3]
    lat_x, lat_y = model.encoder(x), model.encoder(y)
    assert lat_x.shape[2] == 6
    changed = [not torch.equal(lat_x[:, :, j], lat_y[:, :, j]) for j in range(6)]
    assert changed == [False, False, False, True, False, False]
    with pytest.raises(ValueError, match="temporal_down=1"):
        SpacetimeTokenizer(**SMALL, temporal_fusion="off")


@pytest.mark.parametrize("fusion", ["conv", "attention"])
@pytest.mark.parametrize("t", [1, 2, 4, 7])
def test_changing_frame_t_never_changes_the_latents_or_bits_of_earlier_frames(fusion, t):
    torch.manual_seed(0)
    model = SpacetimeTokenizer(**SMALL, temporal_fusion=fusion).eval()
    for p in model.parameters():  # zero-initialised temporal paths would make causality trivially true
        torch.nn.init.normal_(p, std=0.2) if p.ndim > 1 else torch.nn.init.normal_(p, std=0.05)
    x = _video(t=8)
    y = x.clone()
    y[:, :, t] = torch.rand_like(y[:, :, t]) * 2 - 1
    with torch.no_grad():
        lat_x, lat_y = model.encoder(x), model.encoder(y)
    first_affected = -(-t // 2)  # latent j covers frames 2j-1 and 2j
    for j in range(lat_x.shape[2]):
        same = torch.equal(lat_x[:, :, j], lat_y[:, :, j])
        assert same == (j < first_affected), f"latent {j} after changing frame {t}"
    bits_x, schedule = model.encode(x)
    bits_y, _ = model.encode(y)
    for stage, bx, by in zip(schedule.stages, bits_x, bits_y):
        for k in range(stage.frames):
            if stage.t0 + k < first_affected:
                assert torch.equal(bx[:, :, k], by[:, :, k])
    # the decoder is causal too: frames before t come out the same from the changed latents
    with torch.no_grad():
        rec_x, rec_y = model.decoder(lat_x, 8), model.decoder(lat_y, 8)
    for f in range(8):
        latest_latent = -(-f // 2)
        if latest_latent < first_affected:
            assert torch.equal(rec_x[:, :, f], rec_y[:, :, f])


# ---- the quantizer ------------------------------------------------------------------------------------------------

def test_codes_are_exactly_plus_minus_one_over_sqrt_d_and_bits_round_trip():
    torch.manual_seed(0)
    q = MultiScaleBSQ(16, (1, 2, 4, 8), None)
    z = torch.randn(3, 16, 5, 8, 8, requires_grad=True)
    out = q(z)
    unit = 1 / 16**0.5
    for code in out.codes:
        assert torch.equal(code.detach().abs(), torch.full_like(code, unit))
    bits = q.bits_of(out)
    assert all(b.dtype == torch.bool for b in bits)
    assert all(torch.equal(c, code.detach()) for c, code in zip(q.codes_from_bits(bits), out.codes))
    # straight-through: the gradient reaches the encoder output unchanged
    out.z_q.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z), atol=1e-5)


def test_more_scales_reconstruct_a_smooth_latent_better():
    torch.manual_seed(0)
    q = MultiScaleBSQ(16, (1, 2, 4, 8), None)
    coarse = torch.randn(10, 16, 2, 2)
    z = F.interpolate(coarse, size=(8, 8), mode="bilinear").reshape(2, 5, 16, 8, 8).transpose(1, 2)
    out = q(z)
    errors = [float((z - q.cumulative(out.codes, out.schedule, k)).pow(2).mean()) for k in range(5)]
    assert errors == sorted(errors, reverse=True) and errors[4] < 0.25 * errors[0]


def test_the_schedule_tiles_the_latent_video_and_refuses_what_it_cannot():
    s = ScaleSchedule.build((1, 2, 4), latent_frames=5, clip_frames=2)
    assert s.segments == [(0, 1), (1, 2), (3, 2)]
    assert [(st.segment, st.side, st.frames) for st in s.stages][:4] == [(0, 1, 1), (0, 2, 1), (0, 4, 1), (1, 1, 2)]
    assert sum(st.tokens for st in s.stages) == 3 * (1 + 4 + 16) + 0 * 1 + 2 * (1 + 4 + 16)
    with pytest.raises(ValueError, match="not strictly increasing"):
        ScaleSchedule.build((1, 4, 2, 8), 5, None)
    with pytest.raises(ValueError, match="cannot be split into clips of 3"):
        ScaleSchedule.build((1, 2, 4, 8), 5, 3)


def test_single_scale_switch_quantizes_the_last_scale_only():
    model = SpacetimeTokenizer(**SMALL, multiscale=False).eval()
    out = model(_video(t=5))
    assert out.quant.schedule.scales == (8,)
    assert [c.shape[-1] for c in out.quant.codes] == [8, 8]


def test_next_scale_inputs_are_the_downsampled_cumulative_codes():
    torch.manual_seed(0)
    q = MultiScaleBSQ(8, (1, 2, 4), None)
    out = q(torch.randn(2, 8, 3, 4, 4))
    inputs = q.next_scale_inputs(out.codes, out.schedule)
    assert [None if i is None else tuple(i.shape[-2:]) for i in inputs] == [None, (2, 2), (4, 4), (1, 1), (2, 2), (4, 4)]
    assert all(i.shape[1] == 16 for i in inputs[1:])  # own segment's cumulative code, then the previous segment's
    expected = q.down(q.up(out.codes[0], 4) + q.up(out.codes[1], 4), 4)
    assert torch.allclose(inputs[2][:, :8], expected)
    image = sum(q.up(c, 4) for c in out.codes[:3])  # the whole first frame, its finest scale included
    assert torch.allclose(inputs[5][:, 8:], image.expand(-1, -1, 2, -1, -1), atol=1e-6)


@pytest.mark.parametrize("magnitude, closer", [(0.4, False), (0.6, True)])
def test_a_scale_brings_the_latent_closer_exactly_when_its_residual_is_large_against_the_code(magnitude, closer):
    """At the full grid: subtracting +-1/sqrt(d) shrinks the residual iff 1/sqrt(d) < 2 mean|residual|."""
    q = MultiScaleBSQ(16, (4,), None)
    torch.manual_seed(0)
    z = torch.where(torch.randn(2, 16, 1, 4, 4) > 0, 1.0, -1.0) * magnitude * q.unit  # mean|z| = magnitude / sqrt(d)
    after = float((z - q(z).z_q).norm())
    assert (after < float(z.norm())) is closer


def test_the_latent_residual_is_not_monotone_over_scales_for_a_small_latent():
    """What the module docstring states: every code has the fixed magnitude 1/sqrt(d), so a latent that is
    small against it is overshot by the coarse scales, and only the finest scale brings it back."""
    torch.manual_seed(0)
    q = MultiScaleBSQ(16, (1, 2, 4), None)
    z = 0.1 * q.unit * torch.randn(4, 16, 1, 4, 4)
    out = q(z)
    residuals = [float((z - q.cumulative(out.codes, out.schedule, k)).norm()) for k in range(4)]
    assert residuals[1] > residuals[0]  # the first scale overshoots
    assert residuals != sorted(residuals, reverse=True)


# ---- loss terms and metrics ---------------------------------------------------------------------------------------

def test_commitment_is_zero_at_a_code_and_grows_off_it():
    q = MultiScaleBSQ(8, (4,), None)
    at_code = torch.where(torch.randn(1, 8, 3, 4, 4) > 0, 1.0, -1.0) / 8**0.5
    assert float(q(at_code).commitment) == 0.0
    assert float(q(at_code + 0.05 * torch.randn_like(at_code)).commitment) > 0.0


def test_entropy_term_prefers_confident_evenly_used_bits_over_collapsed_ones():
    q = MultiScaleBSQ(8, (4,), None, temperature=0.5)
    balanced = torch.where(torch.randn(4, 8, 3, 4, 4) > 0, 1.0, -1.0)
    collapsed = torch.ones_like(balanced)
    unsure = 0.01 * balanced  # on the sphere, all but one channel end up near 0: unsure bits
    unsure[:, 0] = 1.0
    e_bal, e_col, e_unsure = (float(q(z).entropy) for z in (balanced, collapsed, unsure))
    assert e_bal < e_col and e_bal < e_unsure
    p = torch.sigmoid(torch.tensor(2.0 / 0.5))  # P(right bit) of a corner: logit 2 u sqrt(d) / T
    per_token = float(-(p * p.log2() + (1 - p) * (1 - p).log2()))
    assert e_bal == pytest.approx(per_token - 1.0, abs=0.03)  # minus ~1 bit of marginal entropy per bit
    assert e_col == pytest.approx(0.0, abs=0.01)  # a constant bit: its marginal is as sure as each token


def test_temporal_consistency_ignores_a_constant_error_but_not_a_flicker():
    x = _video()
    assert float(vm.temporal_change_error(x, x).max()) == 0.0
    assert float(vm.temporal_change_error(x + 0.3, x).max()) == pytest.approx(0.0, abs=1e-6)
    flickering = x.clone()
    flickering[:, :, 3] += 0.3
    assert float(vm.temporal_change_error(flickering, x).min()) > 0.01


def test_psnr_ssim_and_flicker_are_right_at_their_fixed_points():
    x = (_video() + 1) / 2
    assert torch.allclose(vm.psnr(x, x), torch.full((2,), 100.0))
    assert torch.allclose(vm.ssim(x, x), torch.ones(2))
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    mse = (noisy - x).pow(2).flatten(1).mean(1)
    assert torch.allclose(vm.psnr(noisy, x), -10 * torch.log10(mse))
    assert float(vm.ssim(noisy, x).max()) < 0.99
    still = x[:, :, :1].expand_as(x)
    assert torch.allclose(vm.flicker(still), torch.ones(2))
    assert float(vm.flicker(x).max()) < 0.9


def test_hinge_losses_are_zero_past_the_margin_and_positive_inside_it():
    assert float(hinge_critic_loss(torch.full((4,), 1.5), torch.full((4,), -1.2))) == 0.0
    assert float(hinge_critic_loss(torch.full((4,), 0.5), torch.full((4,), -1.2))) == pytest.approx(0.5)
    assert float(hinge_critic_loss(torch.full((4,), 1.5), torch.full((4,), 0.0))) == pytest.approx(1.0)
    assert float(hinge_generator_loss(torch.full((4,), 2.0))) == -2.0


def test_low_resolution_input_loses_detail_but_keeps_flat_regions():
    flat = torch.full((1, 3, 2, 32, 32), 0.25)
    assert torch.allclose(low_resolution(flat, 2.0), flat)
    x = _video()
    assert float((low_resolution(x, 2.0) - x).abs().mean()) > 0.1


def test_domain_perceptual_distance_is_zero_for_identical_frames_and_grows_with_change():
    torch.manual_seed(0)
    net = DomainDistance(FrameClassifier(num_classes=10, width=8, stages=2), {"mean": [0.5] * 3, "std": [0.5] * 3})
    a = torch.rand(4, 3, 32, 32)
    assert float(net(a, a).abs().max()) == 0.0
    near, far = net(a, (a + 0.02 * torch.randn_like(a)).clamp(0, 1)), net(a, torch.rand_like(a))
    assert bool((near < far).all()) and float(near.min()) > 0
    assert net.label == DOMAIN_LABEL


def _alexnet_file(tmp_path: Path) -> tuple[Path, str]:
    from torchvision.models import alexnet

    torch.manual_seed(0)
    path = tmp_path / "alexnet.pth"
    torch.save(alexnet(weights=None).state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_lpips_runs_on_local_backbone_weights_checked_by_sha256_and_keys(tmp_path: Path):
    path, sha = _alexnet_file(tmp_path)
    metric = LpipsDistance(path, sha)
    a = torch.rand(2, 3, 32, 32)
    assert float(metric(a, a).abs().max()) < 1e-6
    assert float(metric(a, torch.rand_like(a)).min()) > 0
    # the backbone really is the file's (lpips itself would load a wrong file silently)
    state = torch.load(path, weights_only=True)
    assert torch.equal(metric.metric.net.slice1._modules["0"].weight, state["features.0.weight"])
    assert torch.equal(metric.metric.net.slice5._modules["10"].weight, state["features.10.weight"])
    with pytest.raises(UsamError, match="sha256"):
        LpipsDistance(path, "0" * 64)
    foreign = tmp_path / "foreign.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, foreign)
    with pytest.raises(UsamError, match="not a torchvision AlexNet"):
        LpipsDistance(foreign, None)
    with pytest.raises(UsamError, match="not found"):
        LpipsDistance(tmp_path / "missing.pth", sha)


# ---- the task: losses switch on and off, a tiny run learns --------------------------------------------------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    (root / "dvc.yaml").write_text("stages: {}\n")
    cfg = compose(["data.num_videos.train=24", "data.num_videos.val=8", "data.num_videos.test=8"])
    build_dataset(cfg, "moving_digits", root / "data" / "raw" / "moving_digits")
    preprocess_dataset(cfg, root / "data" / "raw" / "moving_digits", root / "data" / "prepared" / "moving_digits")
    return root


def _task(root: Path, overrides: list[str]):
    cfg = compose(["data.num_videos.train=24", *TINY_TOKENIZER, *overrides])
    return make_task("tokenizer", cfg, Layout(root, root / "data"))


def test_each_loss_term_is_reported_only_when_switched_on(digits: Path):
    torch.manual_seed(0)
    batch = {"video": torch.stack([_task(digits, []).dataset("train", train=False)[i]["video"] for i in range(4)])}
    off = ["tokenizer.loss.temporal=0", "tokenizer.loss.denoise.weight=0", "tokenizer.loss.super_resolution.weight=0"]
    task = _task(digits, off)
    _, parts = task.loss(task.build_model(), batch, torch.device("cpu"))
    assert set(parts) == {"loss", "l1", "l2", "recon", "commitment", "entropy"}
    on = ["tokenizer.loss.denoise.share=0.5", "tokenizer.loss.super_resolution.share=0.5",
          "tokenizer.loss.adversarial.weight=0.5", "tokenizer.loss.adversarial.start_step=0"]
    task = _task(digits, on)
    model = task.build_model()
    torch.manual_seed(3)
    loss, parts = task.loss(model, batch, torch.device("cpu"), step=1)
    assert {"temporal", "critic", "generator", "adaptive_weight"} <= set(parts)
    assert {"denoise", "super_resolution"} & set(parts)
    loss.backward()
    assert model.discriminator.net[0].weight.grad.abs().sum() > 0 and model.decoder.last_layer.grad.abs().sum() > 0


def test_the_generator_term_never_trains_the_critic(digits: Path):
    task = _task(digits, ["tokenizer.loss.adversarial.weight=1", "tokenizer.loss.adversarial.start_step=0",
                          "tokenizer.loss.adversarial.adaptive=false"])
    torch.manual_seed(0)
    model = task.build_model()
    video = _video(b=2)
    recon = model(video).recon
    disc = model.discriminator
    parts: dict = {}
    total = task._adversarial(model, video, recon, recon.mean(), 0, parts)
    critic_only = hinge_critic_loss(disc(video), disc(recon.detach()))
    grads = torch.autograd.grad(total, list(disc.parameters()), retain_graph=True)
    expected = torch.autograd.grad(critic_only, list(disc.parameters()))
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(grads, expected))


def test_a_tiny_run_learns_to_reconstruct_digits_not_just_the_background(digits: Path):
    torch.manual_seed(0)
    task = _task(digits, [])
    model = task.build_model()
    data = task.dataset("train", train=False)
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    before = task.summarize(task.evaluate(model, loader, torch.device("cpu")))
    video = torch.stack([data[i]["video"] for i in range(len(data))]).transpose(1, 2)
    target = task._unit(video).clamp(0, 1)
    mean_video = float(vm.psnr(target.mean(0, keepdim=True).expand_as(target), target).mean())
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    model.train()
    for step in range(150):
        batch = {"video": video[(step * 8) % 24:(step * 8) % 24 + 8].transpose(1, 2)}
        loss, _ = task.loss(model, batch, torch.device("cpu"), step)
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = task.summarize(task.evaluate(model, loader, torch.device("cpu")))
    assert after["val_psnr"] > before["val_psnr"] + 8
    assert after["val_psnr"] > mean_video + 2, "beats predicting the average video (background)"
    finest = f"val_psnr_prefix_{len(task.cfg.tokenizer.quantizer.scales)}"
    assert after[finest] == pytest.approx(after["val_psnr"], abs=1e-3)
    assert after[finest] > after["val_psnr_prefix_1"], "all scales beat the coarsest alone"
    with torch.no_grad():  # the latent residual of all scales is what z_q misses of the encoder output
        out = model.eval()(video)
        missed = ((out.latent - out.quant.z_q).flatten(1).norm(dim=1) / out.latent.flatten(1).norm(dim=1)).mean()
    last = f"val_latent_residual_prefix_{len(task.cfg.tokenizer.quantizer.scales)}"
    assert after[last] == pytest.approx(float(missed), rel=1e-4)
    assert after["val_ssim"] > before["val_ssim"]
    assert 0.0 <= after["val_bit_entropy"] <= 1.0


# ---- bad input ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["tokenizer.quantizer.scales=[1,2]"], "must equal the latent grid 4"),
    (["tokenizer.quantizer.clip_frames=3"], "cannot be split into clips of 3"),
    (["data.frames=10", "tokenizer.quantizer.clip_frames=4"], "5 later latent frame.s. cannot be split into clips of 4"),
    (["preprocess.resize=30", "preprocess.crop_size=30"], "not divisible by tokenizer.arch.spatial_down"),
])
def test_a_schedule_that_cannot_tile_the_frames_fails_before_training(overrides, message, tmp_path):
    task = make_task("tokenizer", compose(overrides), Layout(tmp_path, tmp_path / "data"))
    with pytest.raises(ConfigError, match=message) as err:
        task.check_data()  # before looking for any data
    assert "tokenizer.arch" in str(err.value) and "fix:" in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (["tokenizer.quantizer.scales=[1,4,2,8]"], "not strictly increasing"),
    (["tokenizer.arch.temporal_fusion=off"], "temporal_down=1"),
    (["tokenizer.loss.perceptual.backend=lpips"], "needs eval.lpips_weights"),
    (["eval.lpips_weights=/x/alexnet.pth"], "lpips_sha256 is null"),
    (["tokenizer.arch.spatial_down=3"], "tokenizer.arch.spatial_down"),
])
def test_bad_tokenizer_config_is_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose(overrides)


def test_missing_perceptual_weights_fail_before_training(digits: Path):
    task = make_task("tokenizer", compose(["data.num_videos.train=24"]), Layout(digits, digits / "data"))
    with pytest.raises(UsamError, match="frame evaluator") as err:
        task.check_data()
    assert "dvc repro evaluators@moving_digits" in err.value.fix
    cfg = compose(["eval.lpips_weights=weights/alexnet.pth", f"eval.lpips_sha256={'0' * 64}"])
    with pytest.raises(UsamError, match="LPIPS backbone weights not found"):
        make_task("tokenizer", cfg, Layout(digits, digits / "data")).check_data()
