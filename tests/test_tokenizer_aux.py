"""The tokenizer's auxiliary objectives for stable representations (contrastive, predictive): each term is minimal
where it should be and moves when perturbed, off means today's loss exactly, on means logged and trained, and
their heads never reach the exported tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO

from usam.artifacts.layout import Layout
from usam.artifacts.loaders import load_tokenizer
from usam.config import compose
from usam.errors import ConfigError
from usam.models.tokenizer import LatentPredictor, ProjectionHead, SpacetimeTokenizer
from usam.train.tasks import make_task
from usam.train.tokenizer_task import info_nce, predictive_loss, second_view, tokenizer_kwargs
from usam.tune.spec import load_ablation

TINY_TOKENIZER = ["tokenizer.arch.base_channels=8", "tokenizer.quantizer.bits=8", "tokenizer.loss.perceptual.weight=0"]
STATS = {"mean": [0.2, 0.3, 0.4], "std": [0.25, 0.5, 0.3]}
CONTRASTIVE, PREDICTIVE = "tokenizer.loss.contrastive.weight=0.5", "tokenizer.loss.predictive.weight=0.5"
CPU = torch.device("cpu")


def _task(tmp_path: Path, overrides: list[str]):
    task = make_task("tokenizer", compose([*TINY_TOKENIZER, *overrides]), Layout(tmp_path, tmp_path / "data"))
    task._stats = STATS  # the normalization the loss and the second view use (no data needed)
    return task


def _batch(b: int = 4, seed: int = 0, t: int = 5) -> dict:
    """Clips told apart by their colour (one offset per clip and channel) under a noise texture."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.rand(b, 1, 3, 1, 1, generator=g) * 1.6 - 0.8
    return {"video": colour + 0.3 * torch.randn(b, t, 3, 32, 32, generator=g)}  # (B, T, C, H, W), as loaded


def _loss(task, batch: dict, model_seed: int = 0, loss_seed: int = 1, step: int = 0):
    """A fresh model from ``model_seed``, the loss from ``loss_seed``; returns model, loss, parts and the RNG
    state after both (what a later draw would see)."""
    torch.manual_seed(model_seed)
    model = task.build_model()
    torch.manual_seed(loss_seed)
    loss, parts = task.loss(model, batch, CPU, step)
    return model, loss, parts, torch.get_rng_state()


def _unit_rows(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


# ---- InfoNCE --------------------------------------------------------------------------------------------------

def test_info_nce_is_lowest_for_matched_views_and_rises_when_the_pairs_are_shuffled():
    a = _unit_rows(8, 32)  # distinct across the batch
    matched = float(info_nce(a, a, 0.1))
    shuffled = float(info_nce(a, a.roll(1, dims=0), 0.1))  # every clip paired with another one
    assert matched < 0.05 and shuffled > matched + 5
    near = torch.nn.functional.normalize(a + 0.3 * _unit_rows(8, 32, seed=1), dim=1)  # views a little apart
    for temperature in (0.5, 1.0):  # warm enough that the matched pairs do not saturate at ~0
        lo, mid, hi = (float(info_nce(a, b, temperature)) for b in (a, near, a.roll(1, dims=0)))
        assert lo < mid < hi
    # views that tell the clips nothing apart: chance, log N
    same = a[:1].expand(8, -1)
    assert float(info_nce(same, same, 0.1)) == pytest.approx(float(torch.log(torch.tensor(8.0))), rel=1e-5)


def test_info_nce_is_symmetric_in_its_two_views():
    a, b = _unit_rows(6, 16, 0), _unit_rows(6, 16, 1)
    assert float(info_nce(a, b, 0.2)) == pytest.approx(float(info_nce(b, a, 0.2)), rel=1e-6)


def test_the_projection_head_pools_time_and_space_onto_the_unit_sphere():
    torch.manual_seed(0)
    head = ProjectionHead(8, 16)
    z = torch.randn(3, 8, 4, 4, 4)
    out = head(z)
    assert out.shape == (3, 16) and torch.allclose(out.norm(dim=1), torch.ones(3))
    # pooled: moving the content in space or time does not change it
    assert torch.allclose(head(z.roll(1, dims=4).roll(2, dims=2)), out, atol=1e-6)


def test_the_second_view_jitters_brightness_in_pixel_values_and_shifts_every_frame_alike():
    mean, std = (torch.tensor(STATS[k]).view(1, -1, 1, 1, 1) for k in ("mean", "std"))
    video = torch.rand(3, 3, 4, 16, 16) * 2 - 1
    assert torch.allclose(second_view(video, mean, std, 0, 0.0), video, atol=1e-6)
    torch.manual_seed(0)
    bright = second_view(video, mean, std, 0, 0.3)
    gain = (bright * std + mean) / (video * std + mean)  # in pixel values, one factor per clip
    per_clip = gain.flatten(1)
    assert torch.allclose(per_clip, per_clip[:, :1].expand_as(per_clip), atol=1e-4)
    assert float((per_clip[:, 0] - 1).abs().max()) <= 0.3 and not torch.allclose(per_clip[:, 0], torch.ones(3))
    torch.manual_seed(1)
    moved = second_view(video, mean, std, 2, 0.0)
    assert moved.shape == video.shape and not torch.equal(moved, video)
    for i in range(3):  # some shift of at most 2 pixels reproduces the interior, the same one for every frame
        hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                if torch.allclose(moved[i, :, :, 2:-2, 2:-2], video[i, :, :, 2 + dy:14 + dy, 2 + dx:14 + dx], atol=1e-6)]
        assert len(hits) == 1


# ---- the predictive term --------------------------------------------------------------------------------------

@torch.no_grad()
def test_the_predictor_starts_as_no_change_so_a_constant_latent_costs_nothing_and_a_moved_next_frame_does():
    torch.manual_seed(0)
    predictor = LatentPredictor(8, hidden=16, kernel=2)
    still = torch.randn(2, 8, 1, 4, 4).expand(-1, -1, 5, -1, -1).contiguous()  # constant in time
    assert float(predictive_loss(predictor, still)) == 0.0
    moved = still.clone()
    moved[:, :, 3] += 0.5 * torch.randn_like(moved[:, :, 3])
    more = still.clone()
    more[:, :, 3] += 1.0 * torch.randn_like(more[:, :, 3])
    assert 0.0 < float(predictive_loss(predictor, moved)) < float(predictive_loss(predictor, more))


@torch.no_grad()
def test_a_trained_predictor_maps_a_moving_latent_exactly_and_a_perturbed_future_costs_more():
    """A latent that moves one grid cell per frame: the causal conv can learn the shift; once it has, the loss is
    ~0, and a next frame that does not follow the motion is expensive."""
    torch.manual_seed(0)
    base = torch.randn(2, 4, 1, 6, 6)
    z = torch.cat([base.roll(j, dims=4) for j in range(5)], dim=2)  # frame j = base shifted j cells right
    predictor = LatentPredictor(4, hidden=16, kernel=1)
    conv_in, conv_out = predictor.conv_in.conv, predictor.conv_out.conv
    with torch.no_grad():  # set it to "shift right by one cell": change = the cell to the left - the cell itself
        for p in (conv_in.weight, conv_in.bias, conv_out.weight, conv_out.bias):
            p.zero_()
        conv_in.bias[:8] = 100.0  # keeps SiLU in its linear range: silu(v + 100) = v + 100 in float32
        for c in range(4):
            conv_in.weight[c, c, 0, 1, 0] = 1.0  # hidden c: channel c of the cell to the left
            conv_in.weight[4 + c, c, 0, 1, 1] = 1.0  # hidden 4 + c: channel c of the cell itself
            conv_out.weight[c, c] = 1.0
            conv_out.weight[c, 4 + c] = -1.0
    inner = (slice(None), slice(None), slice(None), slice(None), slice(1, None))  # away from the zero padding
    exact = float((predictor(z) - z[:, :, 1:])[inner].pow(2).mean())
    assert exact < 1e-6
    wrong = z.clone()
    wrong[:, :, 4] = z[:, :, 3]  # the last frame stops moving
    assert float((predictor(wrong) - wrong[:, :, 1:])[inner].pow(2).mean()) > 0.1


def test_the_predictor_is_causal_each_prediction_sees_only_the_frames_before_its_target():
    torch.manual_seed(0)
    predictor = LatentPredictor(8, hidden=16, kernel=3)
    for p in predictor.parameters():  # the zero-initialised change would make this trivially true
        torch.nn.init.normal_(p, std=0.3)
    z = torch.randn(2, 8, 6, 4, 4)
    for k in range(6):
        y = z.clone()
        y[:, :, k] += 1.0
        a, b = predictor(z), predictor(y)
        for j in range(5):  # prediction j is of frame j + 1, from frames <= j (the last `kernel` of them)
            assert torch.equal(a[:, :, j], b[:, :, j]) == (j < k or j >= k + 3), (k, j)
    with pytest.raises(ValueError, match="no next frame"):
        predictor(z[:, :, :1])


def test_the_detached_target_gets_no_gradient_and_the_undetached_one_does():
    torch.manual_seed(0)
    predictor = LatentPredictor(8, hidden=16, kernel=2)
    for detach in (True, False):
        z = torch.randn(2, 8, 4, 4, 4, requires_grad=True)
        predictive_loss(predictor, z, detach_target=detach).backward()
        last = z.grad[:, :, -1]  # a target only, never an input
        assert bool(last.abs().sum() == 0) == detach
        assert float(z.grad[:, :, 0].abs().sum()) > 0  # an input: the encoder learns from it either way


# ---- the task: off is today, on is logged and trained ---------------------------------------------------------

def test_with_both_weights_zero_there_is_no_head_no_new_part_and_no_extra_random_draw(tmp_path):
    task = _task(tmp_path, ["tokenizer.loss.contrastive.temperature=0.7", "tokenizer.loss.predictive.kernel=3"])
    assert task.tcfg.loss.contrastive.weight == 0 and task.tcfg.loss.predictive.weight == 0  # the defaults
    torch.manual_seed(0)
    model = task.build_model()
    after_build = torch.get_rng_state()
    torch.manual_seed(0)
    bare = SpacetimeTokenizer(**tokenizer_kwargs(task.tcfg))
    assert torch.equal(after_build, torch.get_rng_state()), "building the model drew no extra random number"
    assert not hasattr(model, "aux")
    assert list(model.state_dict()) == list(bare.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), bare.state_dict().values()))
    batch = _batch()
    _, loss, parts, rng = _loss(task, batch)
    torch.manual_seed(1)  # the loss's only random draws are the corruption's (the denoise / super-resolution share)
    task._corrupt(batch["video"].transpose(1, 2))
    assert torch.equal(rng, torch.get_rng_state())
    today = {"loss", "l1", "l2", "recon", "denoise", "super_resolution", "temporal", "commitment", "entropy"}
    assert {"loss", "l1", "l2", "temporal", "commitment", "entropy"} <= set(parts) <= today  # no new key
    # the other aux knobs mean nothing while the weights are 0: the same loss, bit for bit
    _, loss_default, parts_default, rng_default = _loss(_task(tmp_path, []), batch)
    assert torch.equal(loss, loss_default) and parts == parts_default and torch.equal(rng, rng_default)


@pytest.mark.parametrize("name, override", [("contrastive", CONTRASTIVE), ("predictive", PREDICTIVE)])
def test_switched_on_a_term_is_added_to_todays_loss_and_logged_leaving_every_other_part_as_it_was(tmp_path, name,
                                                                                                   override):
    batch = _batch()
    off_model, loss_off, parts_off, _ = _loss(_task(tmp_path, []), batch)
    on_model, loss_on, parts_on, _ = _loss(_task(tmp_path, [override]), batch)
    assert set(parts_on) == set(parts_off) | {name}
    assert {k: v for k, v in parts_on.items() if k not in ("loss", name)} == \
        {k: v for k, v in parts_off.items() if k != "loss"}, "the corruption roles and every other term are unchanged"
    assert parts_on[name] > 0
    assert float(loss_on.detach()) == pytest.approx(float(loss_off.detach()) + 0.5 * parts_on[name], rel=1e-5)
    # the tokenizer itself is initialised as before: the head is made after it
    tok = {k: v for k, v in on_model.state_dict().items() if not k.startswith("aux.")}
    assert all(torch.equal(v, off_model.state_dict()[k]) for k, v in tok.items()) and len(tok) == len(off_model.state_dict())
    assert list(on_model.aux) == [name]


@pytest.mark.parametrize("name, override", [("contrastive", CONTRASTIVE), ("predictive", PREDICTIVE)])
def test_switched_on_a_term_trains_its_head_and_its_gradient_reaches_the_encoder(tmp_path, name, override):
    """Through every encoder output it uses: the training input's latent (both terms) and, for the contrastive
    term, the second view's."""
    batch = _batch()
    grads, outputs = {}, {}
    for key, overrides in (("off", []), ("on", [override])):
        task = _task(tmp_path, overrides)
        torch.manual_seed(0)
        model = task.build_model()
        outputs[key] = []

        def keep(_module, _inputs, out, key=key) -> None:  # returns None: the output stays what it was
            out.retain_grad()
            outputs[key].append(out)

        model.encoder.register_forward_hook(keep)
        torch.manual_seed(1)
        loss, _ = task.loss(model, batch, CPU)
        loss.backward()
        grads[key] = model.encoder.conv_in.conv.weight.grad.clone()
        if key == "on":
            head_grads = [p.grad for p in model.aux[name].parameters()]
            assert any(g is not None and float(g.abs().sum()) > 0 for g in head_grads), f"the {name} head learns"
    assert float((grads["on"] - grads["off"]).abs().sum()) > 0, f"the {name} term's gradient reaches the encoder"
    assert len(outputs["off"]) == 1 and len(outputs["on"]) == (2 if name == "contrastive" else 1)
    on, off = outputs["on"][0].grad, outputs["off"][0].grad
    assert float((on - off).abs().sum()) > 0, f"the {name} term reaches the training input's latent"
    if name == "contrastive":
        view = outputs["on"][1].grad
        assert view is not None and float(view.abs().sum()) > 0, "and the second view's latent"


@torch.no_grad()
def test_the_contrastive_term_is_lower_for_the_batchs_true_pairs_than_for_shuffled_ones(tmp_path):
    task = _task(tmp_path, [CONTRASTIVE, "tokenizer.loss.contrastive.shift=1", "tokenizer.loss.contrastive.brightness=0"])
    torch.manual_seed(0)
    model = task.build_model()
    for p in model.aux["contrastive"].parameters():  # a head that tells clips apart well enough
        torch.nn.init.normal_(p, std=1.0)
    video = _batch(b=6)["video"].transpose(1, 2)
    latent = model(video).latent
    torch.manual_seed(1)
    true = float(task._contrastive(model, video, latent))
    torch.manual_seed(1)
    shuffled = float(task._contrastive(model, video, latent.roll(1, dims=0)))
    assert true < shuffled


def test_a_few_steps_on_a_fixed_batch_lower_both_auxiliary_terms(tmp_path):
    task = _task(tmp_path, [CONTRASTIVE, PREDICTIVE, "tokenizer.loss.denoise.weight=0",
                            "tokenizer.loss.super_resolution.weight=0", "tokenizer.loss.contrastive.shift=0",
                            "tokenizer.loss.contrastive.brightness=0"])
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    batch = _batch(b=4)
    history = []
    for step in range(12):
        loss, parts = task.loss(model, batch, CPU, step)
        loss.backward()
        opt.step()
        opt.zero_grad()
        history.append(parts)
    for name in ("contrastive", "predictive"):
        first, last = history[0][name], min(h[name] for h in history[-3:])
        assert last < first, (name, first, last)


def test_the_heads_are_training_only_the_exported_tokenizer_keeps_its_shape(tmp_path):
    task = _task(tmp_path, [CONTRASTIVE, PREDICTIVE, "tokenizer.loss.adversarial.weight=0.1"])
    torch.manual_seed(0)
    model = task.build_model()
    state = model.state_dict()
    assert any(k.startswith("aux.contrastive.") for k in state) and any(k.startswith("aux.predictive.") for k in state)
    # what the trainer exports: every key of the trained module, with the constructor kwargs beside them
    path = tmp_path / "weights.pt"
    torch.save({"model": state, "task": "tokenizer", **task.export_meta()}, path)
    loaded, meta = load_tokenizer(path)
    assert meta["model_kwargs"] == tokenizer_kwargs(task.tcfg)
    bare = SpacetimeTokenizer(**tokenizer_kwargs(task.tcfg))
    assert list(loaded.state_dict()) == list(bare.state_dict())
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    # the trained module (heads included) rebuilds from the config, as the trainer's export does
    again = task.build_model()
    again.load_state_dict(state)


# ---- config and the ablation study ----------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    ([CONTRASTIVE, "tokenizer.train.batch_size=1"], "contrastive needs negatives"),
    (["tokenizer.loss.contrastive.temperature=0"], "tokenizer.loss.contrastive.temperature"),
    (["tokenizer.loss.predictive.kernel=0"], "tokenizer.loss.predictive.kernel"),
    (["tokenizer.loss.predictive.detach_target=maybe"], "tokenizer.loss.predictive.detach_target"),
])
def test_bad_auxiliary_settings_are_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose(overrides)


def test_the_ablation_study_switches_each_auxiliary_on_alone():
    spec = load_ablation(REPO / "ablations" / "components.yaml")  # composes every variant on every dataset
    variants = {v.name: v for v in spec.variants}
    raw = yaml.safe_load((REPO / "ablations" / "components.yaml").read_text())["variants"]
    for name in ("contrastive", "predictive"):
        assert variants[name].rationale
        cfg = compose(raw[name]["overrides"])
        assert getattr(cfg.tokenizer.loss, name).weight > 0
        other = "predictive" if name == "contrastive" else "contrastive"
        assert getattr(cfg.tokenizer.loss, other).weight == 0
