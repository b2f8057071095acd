"""The four baselines: each trains on the tiny config (its loss falls), samples videos in range, and keeps
its defining property (GAN players separated, MaskGIT fully decoded, DDIM deterministic, raster order causal)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import digits_and_tokenizer

from usam.artifacts.layout import Layout
from usam.config import compose
from usam.models.baselines import LatentDiffusion, MaskGIT, VideoGAN
from usam.models.raster_ar import RasterAR
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


def test_the_gan_generator_term_never_trains_the_critic_and_vice_versa():
    torch.manual_seed(0)
    gan = VideoGAN(frames=4, size=16, noise_dim=8, channels=8, critic_channels=8, num_classes=3)
    real = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    classes = torch.tensor([0, 2])
    critic, generator = gan(real, classes)
    g_critic = torch.autograd.grad(generator, _critic(gan), allow_unused=True)
    assert all(g is None or float(g.abs().sum()) == 0 for g in g_critic), "generator loss reached the critic"
    g_gen = torch.autograd.grad(generator, _generator(gan), allow_unused=True, retain_graph=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in g_gen)
    d_gen = torch.autograd.grad(critic, _generator(gan), allow_unused=True)
    assert all(g is None or float(g.abs().sum()) == 0 for g in d_gen), "critic loss reached the generator"


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
