"""What the training-speed switches and FLOP counts promise: a switch reaches the model and optimizer the
loop trains, a bad value is one clear error, the defaults keep today's numerics, and the analytical FLOP
formulas agree with FlopCounterMode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, digits_and_tokenizer
from torch.utils.flop_counter import FlopCounterMode

from usam.artifacts.layout import Layout
from usam.config import compose, to_dict
from usam.errors import ConfigError
from usam.models.bsq import MultiScaleBSQ
from usam.models.flops import flop_counter, layer_train_flops, usam_train_flops
from usam.models.tokenizer import SpacetimeTokenizer
from usam.models.usam import USAM, USAMConfig
from usam.train import loop
from usam.train.session import LocalSession

TOKENIZER = [*TINY, "tokenizer.loss.perceptual.weight=0", "tokenizer.train.max_steps=1"]


def _trained(monkeypatch, root: Path, overrides: list[str]) -> loop.Trainer:
    """The Trainer ``train_worker`` builds for the tiny tokenizer under ``overrides`` (after its one step)."""
    seen = {}
    real = loop.Trainer.train

    def capture(self):
        seen["trainer"] = self
        real(self)

    monkeypatch.setattr(loop.Trainer, "train", capture)
    cfg = compose([*TOKENIZER, *overrides])
    spec = loop.WorkerSpec(config=to_dict(cfg), task="tokenizer", layout=Layout(root, root / "data"), inputs=None,
                           log_every=1, fault_marker=str(root / "fault"), nonfinite_marker=str(root / "nonfinite"))
    loop.train_worker(spec, LocalSession(torch.device("cpu"), root / "ckpt"))
    return seen["trainer"]


def _convs(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv3d)]


def test_speed_switches_reach_the_trained_model_and_optimizer(tmp_path, monkeypatch):
    digits_and_tokenizer(tmp_path, TOKENIZER)
    default = _trained(monkeypatch, tmp_path, [])
    assert not default.optimizer.defaults["fused"] and not default.optimizer.defaults["foreach"]
    assert not any(w.is_contiguous(memory_format=torch.channels_last_3d) for w in _convs(default.bare) if w.shape[2:] != (1, 1, 1))

    fast = _trained(monkeypatch, tmp_path, ["tokenizer.train.runtime.optimizer_impl=fused",
                                            "tokenizer.train.runtime.channels_last=true"])
    assert fast.optimizer.defaults["fused"] is True
    convs = _convs(fast.bare)
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convs)
    assert fast.progress.step == 1  # and it trains
    foreach = _trained(monkeypatch, tmp_path, ["tokenizer.train.runtime.optimizer_impl=foreach"])
    assert foreach.optimizer.defaults["foreach"] is True and not foreach.optimizer.defaults["fused"]


@pytest.mark.parametrize("override", ["train.runtime.optimizer_impl=adam", "tokenizer.train.runtime.channels_last=sometimes",
                                      "evaluator.train.runtime.optimizer_impl=null"])
def test_a_bad_speed_switch_is_one_config_error(override):
    with pytest.raises(ConfigError) as info:
        compose([override])
    assert override.split("=")[0].rsplit(".", 1)[1] in str(info.value)


def test_the_defaults_keep_todays_numerics():
    """Only these defaults reproduce the weights dvc.lock pins."""
    for section in ("train", "evaluator.train", "tokenizer.train"):
        runtime = compose([])
        for part in section.split("."):
            runtime = getattr(runtime, part)
        assert runtime.runtime.optimizer_impl == "auto" and runtime.runtime.channels_last is False


def test_deterministic_mode_does_not_nan_fill_new_tensors():
    from usam.seeding import set_deterministic

    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
    finally:
        set_deterministic(False)


# ---- analytical FLOPs against FlopCounterMode

TOLERANCE = 0.01  # what the formula leaves out: the first stage's in_proj (it has no input), the loss


def _usam_step_flops(model: USAM, quantizer: MultiScaleBSQ, batch: int = 2) -> float:
    z = torch.randn(batch, model.bits, model.schedule.latent_frames, model.schedule.grid, model.schedule.grid)
    codes = quantizer(z).codes
    with flop_counter() as counter:
        logits = model(quantizer.next_scale_inputs(codes, model.schedule), {"class": torch.zeros(batch, dtype=torch.long)})
        logits.float().square().mean().backward()
    return counter.get_total_flops() / batch


def test_flopcountermode_misses_cpu_attention_and_flop_counter_adds_it():
    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    with FlopCounterMode(display=False) as plain:
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
    with flop_counter() as completed:
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
    assert plain.get_total_flops() == 0  # when this fails, torch counts it: drop usam.models.flops.CPU_ATTENTION
    assert completed.get_total_flops() == 14 * 16**2 * 16  # forward 2 products, backward 5, each 2 x L^2 x width


def test_the_transformer_formula_matches_flopcountermode_attention_included():
    torch.manual_seed(0)
    # many tokens for the width: attention is most of the count, so a wrong attention term cannot hide
    kwargs = dict(bits=8, scales=[1, 2, 4, 8], latent_frames=3, width=16, depth=2, heads=2, num_classes=3, dropout=0.0)
    model = USAM(USAMConfig(**kwargs))
    measured = _usam_step_flops(model, MultiScaleBSQ(8, (1, 2, 4, 8), None))
    formula = usam_train_flops(model)
    assert formula["tokens"] == model.bounds[-1]
    assert abs(formula["total"] / measured - 1) < TOLERANCE, (formula, measured)
    # with attention dropout the CPU takes the math path, which keeps the probabilities: 12 instead of 14
    dropped = USAM(USAMConfig(**{**kwargs, "dropout": 0.1}))
    assert abs(usam_train_flops(dropped)["total"] / _usam_step_flops(dropped, MultiScaleBSQ(8, (1, 2, 4, 8), None)) - 1) \
        < TOLERANCE
    # the check has teeth: without the attention term, or with 4 instead of 6 per weight, it is off by more
    assert abs(formula["dense"] / measured - 1) > 2 * TOLERANCE
    assert abs((formula["dense"] * 4 / 6 + formula["attention"]) / measured - 1) > 2 * TOLERANCE


def test_the_conv_formula_matches_flopcountermode_frozen_layers_included():
    torch.manual_seed(0)
    model = SpacetimeTokenizer(bits=8, base_channels=8, spatial_down=4, temporal_down=2, scales=(1, 2, 4))
    judge = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(4, 4, 3)).requires_grad_(False)
    video = torch.randn(2, 3, 5, 16, 16)

    def loss() -> torch.Tensor:
        out = model(video)
        frames = lambda v: v.transpose(1, 2).reshape(-1, 3, 16, 16)  # noqa: E731
        return (out.recon - video).abs().mean() + (judge(frames(out.recon)) - judge(frames(video))).square().mean() \
            + out.quant.commitment

    with FlopCounterMode(display=False) as counter:
        loss().backward()
    measured = counter.get_total_flops()
    formula = layer_train_flops(loss, [model, judge])
    assert formula["macs"]["two_passes"] and formula["macs"]["forward_only"]  # the first layer, the judge
    assert abs(formula["total"] / measured - 1) < 0.01, (formula, measured)
    # 6 x every multiply-add (the naive count) overstates this step
    assert 6 * sum(formula["macs"].values()) / measured - 1 > 0.03
