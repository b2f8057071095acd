"""The four baselines: each trains on the tiny config (its loss falls), samples videos in range, and keeps
its defining property (GAN players separated, MaskGIT fully decoded, DDIM deterministic, raster order causal),
and the GAN its stabilisations (spectral norm, R1, DiffAugment, an EMA generator that samples, two learning rates)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import digits_and_tokenizer

from usam.artifacts.layout import Layout
from usam.config import compose
from usam.models import parameter_count
from usam.models.baselines import LatentDiffusion, MaskGIT, VideoGAN, diff_augment, r1_penalty
from usam.models.raster_ar import RasterAR
from usam.models.tokenizer import latent_frames
from usam.models.usam import USAM, USAMConfig
from usam.train.tasks import BASELINES, make_task

TINY = ["data.num_videos.train=16", "data.num_videos.val=4", "data.num_videos.test=4", "tokenizer.arch.base_channels=8",
        "tokenizer.quantizer.bits=8", "baselines.raster_ar.size.width=32", "baselines.raster_ar.size.depth=1",
        "baselines.maskgit.size.width=32", "baselines.maskgit.size.depth=1", "baselines.diffusion.size.width=32",
        "baselines.diffusion.size.depth=1", "baselines.gan.channels=8", "baselines.gan.critic_channels=8",
        "baselines.diffusion.sample_steps=5", "baselines.maskgit.steps=4", "model.conditioning.dropout=0"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("baselines")
    digits_and_tokenizer(root, TINY)
    return root


def _task(root: Path, name: str, *overrides: str):
    return make_task(name, compose([*TINY, *overrides]), Layout(root, root / "data"))


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_overfits_a_batch_and_samples_videos(project: Path, name: str):
    task = _task(project, name)
    task.check_data()
    torch.manual_seed(0)
    model = task.build_model()
    data = task.dataset("train", train=False)
    batch = torch.utils.data.default_collate([data[i] for i in range(8)])
    opt = torch.optim.AdamW(model.parameters(), 3e-3 if name != "gan" else 1e-3)
    first = None
    losses = []
    for step in range(60):
        loss, parts = task.loss(model, batch, torch.device("cpu"), step)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(parts["critic"] if name == "gan" else loss.item())
        first = first if first is not None else losses[0]
    tail = sum(losses[-10:]) / 10
    if name == "gan":
        assert tail < first, losses[::10]  # the critic learns to tell the batch from the generator's output
    else:
        assert tail < 0.7 * first, losses[::10]
    scores = task.summarize(task.evaluate(model, torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(4)),
                                                                             batch_size=2), torch.device("cpu")))
    assert all(torch.isfinite(torch.tensor(v)) for v in scores.values()) and scores
    cond, names = task.grid_conditions(1, torch.device("cpu"))
    assert names == task.class_names() and cond["class"].tolist() == list(range(10))
    videos = task.sample(model.eval(), {"class": cond["class"][:3]}, 3, torch.device("cpu"),
                         torch.Generator().manual_seed(0))
    assert videos.shape == (3, 3, 8, 32, 32)
    assert 0 <= float(videos.min()) and float(videos.max()) <= 1 and float(videos.std()) > 0
    again = task.sample(model, {"class": cond["class"][:3]}, 3, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert torch.equal(videos, again), "a seed fixes the samples"


@pytest.mark.parametrize("r1_weight, classifier_weight", [(0.0, 0.0), (2.0, 0.0), (0.0, 1.0)])
def test_the_gan_generator_term_never_trains_the_critic_and_vice_versa(r1_weight: float, classifier_weight: float):
    torch.manual_seed(0)
    gan = VideoGAN(frames=4, size=16, noise_dim=8, channels=8, critic_channels=8, num_classes=3,
                   classifier_weight=classifier_weight)
    assert (gan.critic_classifier is not None) == (classifier_weight > 0)
    real = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    classes = torch.tensor([0, 2])
    critic, generator, r1 = gan(real, classes, r1_weight=r1_weight)
    assert (float(r1) > 0) == (r1_weight > 0)
    g_critic = torch.autograd.grad(generator, _critic(gan), allow_unused=True)
    assert all(g is None or float(g.abs().sum()) == 0 for g in g_critic), "generator loss reached the critic"
    g_gen = torch.autograd.grad(generator, _generator(gan), allow_unused=True, retain_graph=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in g_gen)
    d_gen = torch.autograd.grad(critic, _generator(gan), allow_unused=True, retain_graph=True)
    assert all(g is None or float(g.abs().sum()) == 0 for g in d_gen), "critic loss reached the generator"
    d_critic = torch.autograd.grad(critic, _critic(gan), allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in d_critic)
    assert not any(n.startswith("generator_ema") for n, _ in gan.named_parameters()), "the EMA is not trained"
    if classifier_weight:  # the auxiliary classifier learns from real videos only, on the critic's side
        classifier = list(gan.critic_classifier.parameters())
        critic, generator, _ = gan(real, classes)
        assert float(torch.autograd.grad(critic, classifier, retain_graph=True)[-1].abs().sum()) > 0
        assert all(g is None or float(g.abs().sum()) == 0
                   for g in torch.autograd.grad(generator, classifier, allow_unused=True))


def test_the_auxiliary_classifier_pulls_the_generator_towards_the_class():
    """With the classifier's loss, the generator's gradient differs from the critic-only one; without classes, the
    classifier is off."""
    torch.manual_seed(0)
    gan = VideoGAN(frames=4, size=16, noise_dim=8, channels=8, critic_channels=8, num_classes=3, classifier_weight=1.0)
    gan.eval()  # spectral norm's power iteration would move between the passes compared
    real, classes = torch.rand(2, 3, 4, 16, 16) * 2 - 1, torch.tensor([0, 2])
    torch.manual_seed(1)
    _, with_cls, _ = gan(real, classes)
    gan.classifier_weight = 0.0
    torch.manual_seed(1)
    _, without, _ = gan(real, classes)
    assert float(with_cls) > float(without)  # + the cross-entropy, which is positive
    gan.classifier_weight = 1.0
    torch.manual_seed(1)
    _, unconditional, _ = gan(real, None)
    gan.classifier_weight = 0.0
    torch.manual_seed(1)
    _, reference, _ = gan(real, None)
    assert float(unconditional) == pytest.approx(float(reference))


def test_r1_is_the_mean_squared_gradient_norm_and_is_differentiable():
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]], requires_grad=True)
    x = torch.randn(5, 2, 2, requires_grad=True)
    linear = r1_penalty((x * w).sum((1, 2)), x)  # d score / d x = w for every sample
    assert float(linear.detach()) == pytest.approx(float((w ** 2).sum().detach()))  # 1 + 4 + 0.25 + 9
    (dw,) = torch.autograd.grad(linear, w)
    assert torch.allclose(dw, 2 * w), "the penalty trains the critic (double backward)"
    x2 = torch.randn(4, 3, requires_grad=True)
    quadratic = r1_penalty((x2 ** 2).sum(1), x2)  # gradient 2x: the penalty is the mean of 4 |x|^2
    assert float(quadratic.detach()) == pytest.approx(float(4 * (x2.detach() ** 2).sum(1).mean()), rel=1e-5)


def test_the_critic_is_spectrally_normalised():
    torch.manual_seed(0)
    gan = VideoGAN(frames=4, size=16, noise_dim=8, channels=8, critic_channels=8, num_classes=3)
    layers = [m for m in gan.critic_net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear, torch.nn.Embedding))]
    assert len(layers) == 5  # 2 strided convolutions, the dense layer, the score head and the class projection
    assert all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in layers)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in gan.generator.modules())
    with torch.no_grad():
        for _ in range(30):  # power iterations, one per training forward
            gan.critic(torch.randn(2, 3, 4, 16, 16), torch.tensor([0, 1]))
    for m in layers:
        sigma = float(torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2))
        assert sigma == pytest.approx(1.0, abs=0.05), (m, sigma)


def test_diff_augment_moves_whole_videos_alike_and_lets_gradients_through():
    video = torch.full((3, 3, 4, 16, 16), -1.0)
    video[:, :, :, 8, 8] = 1.0  # one bright pixel, the same in every frame
    torch.manual_seed(0)
    shifted = diff_augment(video, ("translation",))
    for b in range(3):
        spots = (shifted[b, 0] == 1).nonzero()
        assert len(spots) == 4 and len({(int(y), int(x)) for _, y, x in spots}) == 1, "one shift for all frames"
        assert all(abs(int(v) - 8) <= 2 for v in spots[0, 1:]), "at most 1/8 of the side"
    assert any(not torch.equal(shifted[b], video[b]) for b in range(3))
    bright = diff_augment(video, ("brightness",)) - video
    assert torch.allclose(bright, bright[:, :1, :1, :1, :1].expand_as(bright)) and float(bright.abs().max()) <= 0.5
    x = video.clone().requires_grad_(True)
    diff_augment(x, ("translation", "brightness", "contrast", "cutout")).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="unknown augmentation"):
        VideoGAN(frames=4, size=16, augment=("flip",))


def test_the_gan_samples_from_its_ema_generator_and_exports_it(project: Path):
    task = _task(project, "gan")
    torch.manual_seed(0)
    model = task.build_model().eval()
    cond = {"class": torch.tensor([0, 3])}

    def draw(m):
        return task.sample(m, cond, 2, torch.device("cpu"), torch.Generator().manual_seed(1))

    before = draw(model)
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(torch.randn_like(p))
    assert torch.equal(draw(model), before), "sampling ignores the generator being trained"
    model.update_ema(1, decay=0.5)  # ramp: min(0.5, 2 / 11) -> the EMA moves 9/11 of the way
    moved = draw(model)
    assert not torch.equal(moved, before)
    ema = dict(model.generator_ema.named_buffers())
    assert int(model.ema_step) == 1
    model.update_ema(1, decay=0.5)
    assert torch.equal(draw(model), moved), "one EMA update per optimizer step"
    rebuilt = task.build_model()
    rebuilt.load_state_dict(model.state_dict())  # what the exported weights restore (usam.eval.generators)
    assert torch.equal(draw(rebuilt.eval()), moved)
    assert set(ema) == {n for n, _ in model.generator.named_parameters()}
    assert parameter_count(model) == parameter_count(model.generator) + parameter_count(model.critic_net) + (
        parameter_count(model.critic_classifier) if model.critic_classifier is not None else 0)


def test_the_ema_is_the_ramped_average_of_the_generator():
    torch.manual_seed(0)
    gan = VideoGAN(frames=4, size=16, noise_dim=8, channels=8, critic_channels=8, num_classes=3)
    name, p = next(iter(gan.generator.named_parameters()))
    start = p.detach().clone()
    with torch.no_grad():
        p.add_(1.0)
    gan.update_ema(100, decay=0.9)  # the ramp (101 / 110) is above 0.9: decay 0.9
    assert torch.allclose(dict(gan.generator_ema.named_buffers())[name], start + 0.1)


def test_the_gan_optimizer_has_two_time_scales_and_the_configured_betas(project: Path):
    task = _task(project, "gan", "baselines.gan.lr=1e-3", "baselines.gan.critic_lr_ratio=4", "baselines.gan.betas=[0.0,0.9]",
                 "baselines.gan.r1_gamma=1.0", "baselines.gan.r1_every=4")
    model = task.build_model()
    groups = task.optimizer_groups(model)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters()) and len(set(seen)) == len(seen)
    critic = {id(p) for p in _critic(model)}
    for g in groups:
        players = {id(p) in critic for p in g["params"]}
        assert len(players) == 1
        assert g["lr"] == pytest.approx(4e-3 if players.pop() else 1e-3) and g["betas"] == (0.0, 0.9)
    assert task.r1_weight(0) == task.r1_weight(8) == pytest.approx(1.0 / 2 * 4) and task.r1_weight(3) == 0


def test_the_gan_has_about_as_many_parameters_as_usam_at_the_default_config(project: Path):
    cfg = compose([])
    assert cfg.data.name == "moving_digits"
    layout = Layout(project, project / "data")  # the default config on the tiny project's digits (10 classes)
    m, q = cfg.model, cfg.tokenizer.quantizer  # USAM as its task builds it on the default tokenizer's stream
    usam = USAM(USAMConfig(bits=q.bits, scales=list(q.scales), latent_frames=latent_frames(cfg.data.frames,
                           cfg.tokenizer.arch.temporal_down), clip_frames=q.clip_frames, width=m.width, depth=m.depth,
                           heads=m.heads, mlp_ratio=m.mlp_ratio, attention=m.attention, positions=m.positions,
                           qk_norm=m.qk_norm, num_classes=10))
    usam_count = parameter_count(usam)
    gan_count = parameter_count(make_task("gan", cfg, layout).build_model())  # generator, critic and classifier (not the EMA)
    assert usam_count == 526_544
    assert abs(gan_count - usam_count) <= 0.1 * usam_count, (gan_count, usam_count)


def test_a_tiny_gan_training_is_deterministic(project: Path):
    task = _task(project, "gan", "baselines.gan.r1_every=2")
    data = task.dataset("train", train=False)
    batch = torch.utils.data.default_collate([data[i] for i in range(4)])

    def train():
        torch.manual_seed(0)
        model = task.build_model()
        opt = torch.optim.AdamW(task.optimizer_groups(model))
        for step in range(3):  # steps 0 and 2 carry R1
            loss, parts = task.loss(model, batch, torch.device("cpu"), step)
            loss.backward()
            opt.step()
            opt.zero_grad()
        assert "r1" in parts and parts["r1"] > 0
        return model.state_dict()

    first, second = train(), train()
    assert first.keys() == second.keys() and any(k.startswith("generator_ema.") for k in first)
    assert all(torch.equal(first[k], second[k]) for k in first), "two seeded runs end bit-identical"


def test_maskgit_decodes_every_token_and_its_schedule_is_cosine():
    torch.manual_seed(0)
    model = MaskGIT(bits=4, tokens=10, width=16, depth=1, heads=2, num_classes=2).eval()
    assert float(MaskGIT.mask_schedule(torch.tensor(0.0))) == pytest.approx(1.0)
    assert float(MaskGIT.mask_schedule(torch.tensor(1.0))) == pytest.approx(0.0, abs=1e-6)
    masked_seen = []
    original = model.forward

    def spy(bits, masked, classes=None):
        masked_seen.append(int(masked.sum(1)[0]))
        return original(bits, masked, classes)

    model.forward = spy
    bits = model.generate(2, torch.tensor([0, 1]), steps=4, generator=torch.Generator().manual_seed(0))
    assert bits.shape == (2, 10, 4) and bits.dtype == torch.bool
    assert masked_seen == sorted(masked_seen, reverse=True) and masked_seen[0] == 10, masked_seen
    assert len(masked_seen) == 4


def test_ddim_with_eta_zero_is_deterministic_and_the_forward_process_is_exact():
    torch.manual_seed(0)
    model = LatentDiffusion(channels=4, tokens=6, width=16, depth=1, heads=2, num_classes=2, timesteps=50).eval()
    a = model.generate(2, torch.tensor([0, 1]), steps=5, generator=torch.Generator().manual_seed(3))
    b = model.generate(2, torch.tensor([0, 1]), steps=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (2, 6, 4)
    x0 = torch.randn(3, 6, 4)
    noisy, t, noise = model.noised(x0, torch.Generator().manual_seed(0))
    ab = model.alpha_bar[t].view(3, 1, 1)
    assert torch.allclose(noisy, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    assert float(model.alpha_bar[0]) > 0.99 and float(model.alpha_bar[-1]) < 0.5


def test_raster_order_is_causal_token_by_token():
    torch.manual_seed(0)
    model = RasterAR(bits=4, tokens=12, width=16, depth=2, heads=2, num_classes=2).eval()
    bits = torch.rand(1, 12, 4) > 0.5
    base = model(bits, torch.tensor([1]))
    changed = bits.clone()
    changed[0, 7] = ~changed[0, 7]
    out = model(changed, torch.tensor([1]))
    assert torch.equal(out[:, :8], base[:, :8]), "token 7's bits feed only the predictions after it"
    assert not torch.equal(out[:, 8:], base[:, 8:])


@pytest.mark.parametrize("name", ["usam", "raster_ar", "diffusion"])
def test_cached_latents_are_the_encoder_output_of_the_unaugmented_split(project: Path, name: str):
    device = torch.device("cpu")
    task = _task(project, name)
    train, val = task.datasets(device)
    plain = task.dataset("train", train=False)
    assert len(train) == len(plain) and len(val) == len(task.dataset("val", train=False))
    batch = torch.utils.data.default_collate([plain[i] for i in (3, 7)])
    cached = torch.utils.data.default_collate([train[i] for i in (3, 7)])
    assert "video" not in cached and torch.equal(cached["class"], batch["class"])
    assert torch.allclose(cached["latent"], task._encode(batch, device), atol=1e-5)
    torch.manual_seed(0)
    model = task.build_model()
    torch.manual_seed(1)
    from_frames, _ = task.loss(model, batch, device)
    torch.manual_seed(1)
    from_cache, _ = task.loss(model, cached, device)
    assert torch.allclose(from_frames, from_cache, atol=1e-4), "a cached batch trains exactly like its frames"
    assert task.summarize(task.evaluate(model, torch.utils.data.DataLoader(val, batch_size=2), device))


def test_the_pixel_gan_and_cache_off_keep_encoding_frames(project: Path):
    device = torch.device("cpu")
    for task in (_task(project, "gan"), _task(project, "usam", "train.cache_latents=false")):
        train, _ = task.datasets(device)
        assert "video" in train[0] and "latent" not in train[0]


def _critic(gan) -> list:
    return [p for n, p in gan.named_parameters() if n.startswith("critic")]


def _generator(gan) -> list:
    return [p for n, p in gan.named_parameters() if not n.startswith("critic")]
