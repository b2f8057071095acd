"""The USAM transformer: what each attention mode may see, KV-cache sampling, guidance, self-correction."""

from __future__ import annotations

import pytest
import torch

from usam.models.bsq import MultiScaleBSQ
from usam.models.usam import USAM, KVCache, SpacetimeRoPE, USAMConfig, attention_mask, attention_reach, token_layout

BITS, SCALES, LATENT_FRAMES, CLIP = 8, (1, 2, 4), 5, 2  # an image pyramid, then two clips of 2 latent frames


def _model(mode: str, positions: str = "rope", **kw) -> USAM:
    torch.manual_seed(0)
    model = USAM(USAMConfig(BITS, SCALES, LATENT_FRAMES, CLIP, width=32, depth=2, heads=2, attention=mode, positions=positions,
                 num_classes=10, **kw)).eval()
    for p in model.parameters():  # zero-initialised gates and projections would hide paths
        torch.nn.init.normal_(p, std=0.3)
    return model


def _stream(batch: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    q = MultiScaleBSQ(BITS, SCALES, CLIP)
    out = q(torch.randn(batch, BITS, LATENT_FRAMES, 4, 4))
    return q, out, q.next_scale_inputs(out.codes, out.schedule)


@pytest.mark.parametrize("mode", ["block_causal", "sparse", "factorized"])
@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_each_attention_mode_sees_exactly_what_its_mask_allows(mode, positions):
    model = _model(mode, positions)
    _, out, inputs = _stream()
    cond = {"class": torch.tensor([3, 7])}
    base = model(inputs, cond)
    reach = attention_reach(model.schedule, mode, len(model.blocks))
    layout = token_layout(model.schedule)
    for stage in (1, 4, 5, 7):  # image scale 2, clip 1 middle and largest scales, clip 2 middle scale
        st = model.schedule.stages[stage]
        perturbed = [None if t is None else t.clone() for t in inputs]
        f, y, x = st.frames - 1, st.side // 2, st.side - 1
        perturbed[stage][:, :, f, y, x] += 1.0  # one token's input
        token = model.bounds[stage] + (f * st.side + y) * st.side + x
        changed = (model(perturbed, cond) - base).abs().flatten(2).amax(-1).amax(0) > 0
        assert torch.equal(changed, reach[:, token]), f"{mode}: stage {stage} reached the wrong tokens"
        assert changed[token] and changed.sum() < len(changed)  # visible somewhere, invisible somewhere
    if mode == "block_causal":  # a token never sees a later stage, and so never a later clip
        assert not model.mask[layout["stage"][:, None] < layout["stage"][None, :]].any()
    if mode == "sparse":  # a clip's first scale sees the previous segment's largest scale and nothing older
        first_clip2 = model.bounds[2 * len(SCALES)]
        seen = set(layout["stage"][model.mask[first_clip2]].tolist())
        assert seen == {2 * len(SCALES), 2 * len(SCALES) - 1}
    if mode == "factorized":  # never a later frame
        assert not model.mask[layout["frame"][:, None] < layout["frame"][None, :]].any()


def test_kv_cached_stages_give_the_full_pass_logits():
    for mode in ("block_causal", "sparse", "factorized"):
        model = _model(mode)
        _, _, inputs = _stream()
        cond = {"class": torch.tensor([3, 7])}
        full = model(inputs, cond)
        state = model._condition(cond, 2, torch.device("cpu"))
        caches = [KVCache(model.bounds[-1]) for _ in model.blocks]
        staged = torch.cat([model.stage_logits(i, inputs[i], state, caches)
                            for i in range(len(model.schedule.stages))], dim=1)
        assert torch.allclose(staged, full, atol=1e-5), mode


def test_the_kv_cache_is_written_in_place_and_refuses_more_than_its_capacity():
    cache = KVCache(5)
    k, v = torch.randn(2, 3, 2, 4), torch.randn(2, 3, 2, 4)
    k1, v1 = cache.extend(k, v)
    assert torch.equal(k1, k) and torch.equal(v1, v)
    k2, v2 = torch.randn(2, 3, 3, 4), torch.randn(2, 3, 3, 4)
    kk, vv = cache.extend(k2, v2)
    assert torch.equal(kk, torch.cat([k, k2], 2)) and torch.equal(vv, torch.cat([v, v2], 2))
    assert kk.data_ptr() == k1.data_ptr()  # one buffer for the whole stream: nothing re-allocated or copied again
    with pytest.raises(ValueError, match="holds 5 tokens; 6"):
        cache.extend(k[:, :, :1], v[:, :, :1])


def test_the_samplers_rope_form_gives_the_bits_of_the_pairwise_form_and_the_same_gradients():
    rope = SpacetimeRoPE(16)
    positions = torch.rand(7, 4) * 8
    cos, sin = rope.angles(positions)
    x = torch.randn(2, 3, 7, 16)
    fast = SpacetimeRoPE.apply(x, cos, sin)  # no autograd: the three-kernel form
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[..., 0::2], sin[..., 1::2]
    pairwise = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    assert torch.equal(fast, pairwise)
    xg = x.clone().requires_grad_(True)
    assert torch.equal(SpacetimeRoPE.apply(xg, cos, sin), pairwise)
    # a rotation: norms of every pair kept
    assert torch.allclose(fast.unflatten(-1, (-1, 2)).norm(dim=-1), x.unflatten(-1, (-1, 2)).norm(dim=-1), atol=1e-5)


def test_per_stage_modulation_gives_the_per_token_logits_with_the_modulation_matmuls_once_per_sample():
    from torch.utils.flop_counter import FlopCounterMode

    model = _model("block_causal")
    _, _, inputs = _stream()
    cond = {"class": torch.tensor([3, 7])}
    state = model._condition(cond, 2, torch.device("cpu"))
    logits, flops = {}, {}
    for modulation in ("per_token", "per_stage"):
        caches = [KVCache(model.bounds[-1]) for _ in model.blocks]
        with torch.no_grad():
            for i in range(len(model.schedule.stages) - 1):
                model.stage_logits(i, inputs[i], state, caches, modulation)
            last = len(model.schedule.stages) - 1
            with FlopCounterMode(display=False) as counter:
                logits[modulation] = model.stage_logits(last, inputs[last], state, caches, modulation)
        flops[modulation] = counter.get_total_flops()
    assert torch.allclose(logits["per_stage"], logits["per_token"], atol=1e-5)
    n, w, depth = model.schedule.stages[-1].tokens, model.width, len(model.blocks)
    # the blocks' modulation (C -> 6C) and the head's (C -> 2C), for n - 1 fewer rows per sample
    assert flops["per_token"] - flops["per_stage"] == 2 * 2 * (n - 1) * w * (6 * w * depth + 2 * w)
    with pytest.raises(ValueError, match="modulation"):
        model.generate(MultiScaleBSQ(BITS, SCALES, CLIP), cond, 2, modulation="per_frame")


def test_bf16_sampling_draws_valid_bits_from_nearly_the_fp32_logits():
    from usam.models.raster_ar import RasterAR

    model = _model("block_causal")
    q = MultiScaleBSQ(BITS, SCALES, CLIP)
    cond = {"class": torch.tensor([3, 7])}
    bits = model.generate(q, cond, 2, precision="bf16", modulation="per_stage", generator=torch.Generator().manual_seed(0))
    assert [b.shape for b in bits] == [(2, BITS, st.frames, st.side, st.side) for st in model.schedule.stages]
    assert all(b.dtype == torch.bool for b in bits)
    _, _, inputs = _stream()
    state = model._condition(cond, 2, torch.device("cpu"))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.stage_logits(0, inputs[0], state, [KVCache(model.bounds[-1]) for _ in model.blocks])
    high = model.stage_logits(0, inputs[0], state, [KVCache(model.bounds[-1]) for _ in model.blocks])
    assert low.dtype == torch.float32 and 0 < (low - high).abs().max() < 0.1 * high.abs().max()
    raster = RasterAR(BITS, 12, width=32, depth=2, heads=2, num_classes=10).eval()
    assert raster.generate(2, cond["class"], precision="bf16").shape == (2, 12, BITS)
    with pytest.raises(ValueError, match="precision"):
        raster.generate(2, cond["class"], precision="fp8")


def test_the_cli_offers_the_samplers_switches():
    from usam.cli import SAMPLER_MODULATIONS, SAMPLER_PRECISIONS
    from usam.models.usam import MODULATIONS, PRECISIONS

    assert (SAMPLER_MODULATIONS, SAMPLER_PRECISIONS) == (MODULATIONS, PRECISIONS)


def _greedy_replay(model, q, bits, cond):
    """Teacher-forced logits of the model on its own samples."""
    codes = q.codes_from_bits(bits)
    return model(q.next_scale_inputs(codes, model.schedule), cond)


def test_sampling_with_and_without_the_cache_and_guidance_match_the_model():
    model = _model("block_causal")
    q = MultiScaleBSQ(BITS, SCALES, CLIP)
    cond = {"class": torch.tensor([3, 7])}
    gen = lambda **kw: model.generate(q, cond, 2, top_k=1, **kw)  # noqa: E731  greedy: deterministic
    cached, recomputed = gen(cfg=1.0), gen(cfg=1.0, use_cache=False)
    assert all(torch.equal(a, b) for a, b in zip(cached, recomputed))
    # scale 1: the conditional model's own choice at every bit
    logits = _greedy_replay(model, q, cached, cond)
    assert torch.equal(model.flatten(cached), logits[..., 1] > logits[..., 0])
    # scale 3 with a linear ramp: uncond + s_k (cond - uncond) at every stage
    guided = gen(cfg=3.0)
    cond_l = _greedy_replay(model, q, guided, cond)
    uncond_l = _greedy_replay(model, q, guided, model.null_condition(2, torch.device("cpu")))
    ramp = torch.cat([torch.full((st.tokens,), s) for st, s in zip(model.schedule.stages, model.guidance(3.0, "linear"))])
    mixed = uncond_l + ramp[None, :, None, None] * (cond_l - uncond_l)
    assert torch.equal(model.flatten(guided), mixed[..., 1] > mixed[..., 0])
    assert not all(torch.equal(a, b) for a, b in zip(guided, cached))  # guidance changed something
    assert model.guidance(3.0, "linear")[:3] == [1.0, 2.0, 3.0]


def test_forced_stages_are_kept_and_the_rest_is_sampled_from_them():
    model = _model("block_causal")
    q = MultiScaleBSQ(BITS, SCALES, CLIP)
    cond = {"class": torch.tensor([3, 7])}
    _, out, _ = _stream()
    given = q.bits_of(out)
    forced = [given[i] if i < len(SCALES) else None for i in range(len(given))]  # the first frame is given
    bits = model.generate(q, cond, 2, top_k=1, forced=forced)
    assert all(torch.equal(bits[i], given[i]) for i in range(len(SCALES)))
    logits = _greedy_replay(model, q, bits, cond)
    lo = model.bounds[len(SCALES)]
    assert torch.equal(model.flatten(bits)[:, lo:], (logits[..., 1] > logits[..., 0])[:, lo:])


def test_temperature_and_top_p_sampling_is_seeded_and_varied():
    model = _model("sparse")
    q = MultiScaleBSQ(BITS, SCALES, CLIP)
    cond = {"class": torch.tensor([3, 3])}
    run = lambda seed, **kw: model.generate(q, cond, 2, generator=torch.Generator().manual_seed(seed), **kw)  # noqa: E731
    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    greedy = model.generate(q, cond, 2, top_k=1)
    nucleus = run(5, top_p=0.0)  # every bit's likelier value covers a nucleus of 0
    assert all(torch.equal(x, y) for x, y in zip(greedy, nucleus))


def test_self_correction_flips_bits_and_targets_correct_the_corrupted_history():
    torch.manual_seed(0)
    q = MultiScaleBSQ(BITS, SCALES, CLIP)
    z = torch.randn(4, BITS, LATENT_FRAMES, 4, 4) * 2
    clean_inputs, clean_targets = q.self_correction(z, 0.0)
    reference = q(z).codes
    assert all(torch.equal(a, b) for a, b in zip(clean_targets, reference))
    assert all(torch.equal(a, b) for a, b in zip(clean_inputs, reference))
    corrupted, targets = q.self_correction(z, 0.3, torch.Generator().manual_seed(0))
    flipped = [float((c != t).float().mean()) for c, t in zip(corrupted, targets)]
    assert 0.0 < sum(flipped) / len(flipped) < 0.3
    # a stage's target is the quantized residual left by the corrupted history before it
    schedule = q.schedule(LATENT_FRAMES)
    k = 2
    history = q.cumulative(corrupted, schedule, k)[:, :, :1]
    expected = torch.where(q.down(z[:, :, :1] - history, SCALES[k]) >= 0, q.unit, -q.unit)
    assert torch.equal(targets[k], expected)
    assert not torch.equal(targets[k], reference[k])


def test_masks_are_built_for_every_mode_and_bad_settings_are_refused():
    model = _model("block_causal")
    schedule = model.schedule
    sizes = {m: int(attention_mask(schedule, m).sum()) for m in ("block_causal", "sparse", "factorized")}
    assert sizes["block_causal"] > sizes["sparse"] and sizes["block_causal"] > sizes["factorized"]
    with pytest.raises(ValueError, match="unknown attention mode"):
        USAM(USAMConfig(BITS, SCALES, LATENT_FRAMES, CLIP, width=32, heads=2, attention="global"))
    with pytest.raises(ValueError, match="divisible by 8"):
        USAM(USAMConfig(BITS, SCALES, LATENT_FRAMES, CLIP, width=36, heads=3))
    with pytest.raises(ValueError, match="cannot be split into clips"):
        USAM(USAMConfig(BITS, SCALES, 4, CLIP, width=32, heads=2))


def test_text_conditioning_reaches_every_token_and_padding_is_ignored():
    model = _model("block_causal", text_vocab=12)
    _, _, inputs = _stream()
    text = torch.tensor([[3, 4, 5, 0], [6, 0, 0, 0]])
    base = model(inputs, {"class": torch.tensor([1, 1]), "text": text})
    padded = torch.cat([text, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    assert torch.allclose(model(inputs, {"class": torch.tensor([1, 1]), "text": padded}), base, atol=1e-5)
    other = text.clone()
    other[0, 1] = 9
    changed = (model(inputs, {"class": torch.tensor([1, 1]), "text": other}) - base).detach().abs().flatten(2).amax(-1)
    assert bool((changed[0] > 0).all()) and float(changed[1].max()) == 0.0


def test_raster_order_baseline_is_causal_token_by_token_and_its_cache_is_exact():
    from usam.models.raster_ar import RasterAR

    torch.manual_seed(0)
    model = RasterAR(BITS, 12, width=32, depth=2, heads=2, num_classes=10).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    classes = torch.tensor([1, 4])
    greedy = lambda **kw: model.generate(2, classes, temperature=0.0, **kw)  # noqa: E731
    cached, recomputed = greedy(), greedy(use_cache=False)
    assert torch.equal(cached, recomputed)
    logits = model(cached, classes)  # teacher-forced on its own samples: the same choices
    assert torch.equal(cached, logits[..., 1] > logits[..., 0])
    bits = cached.clone()
    bits[:, 5] = ~bits[:, 5]
    changed = (model(bits, classes) - logits).detach().abs().flatten(2).amax(-1).amax(0) > 0
    assert not changed[:6].any() and changed[6:].all()  # token 5's bits feed tokens 6.. only


# ---- the whole past: a clip sees the finest scale of the segment before it ------------------------------------

def _flip_finest(codes, segment: int):
    """The codes with every bit of ``segment``'s largest scale flipped."""
    out = [c.clone() for c in codes]
    out[(segment + 1) * len(SCALES) - 1] *= -1
    return out


def _changed_stages(model, a, b) -> list[bool]:
    diff = (a - b).abs().flatten(2).amax(-1).amax(0)
    return [bool(diff[lo:hi].max() > 0) for lo, hi in zip(model.bounds, model.bounds[1:])]


@pytest.mark.parametrize("mode", ["block_causal", "sparse", "factorized"])
def test_the_finest_bits_of_a_segment_reach_every_stage_of_the_next_segment_and_nothing_earlier(mode):
    model = _model(mode)
    q, out, inputs = _stream()
    cond = {"class": torch.tensor([3, 7])}
    base = model(inputs, cond)
    per_segment = len(SCALES)
    segments = len(model.schedule.segments)
    for k in range(segments - 1):
        flipped = model(q.next_scale_inputs(_flip_finest(out.codes, k), model.schedule), cond)
        changed = _changed_stages(model, flipped, base)
        assert not any(changed[:(k + 1) * per_segment]), f"{mode}: segment {k}'s finest bits reached an earlier stage"
        assert all(changed[(k + 1) * per_segment:(k + 2) * per_segment]), \
            f"{mode}: some stage of segment {k + 1} never saw segment {k}'s finest scale"
    # one bit of one token of the first frame's finest scale is enough to move the clip after it
    one = [c.clone() for c in out.codes]
    one[per_segment - 1][:, 0, 0, 1, 2] *= -1
    moved = _changed_stages(model, model(q.next_scale_inputs(one, model.schedule), cond), base)
    assert not any(moved[:per_segment]) and all(moved[per_segment:2 * per_segment])


def test_a_clip_input_carries_the_previous_segments_full_reconstruction():
    q, out, inputs = _stream()
    schedule = q.schedule(LATENT_FRAMES)
    full = q.cumulative(out.codes, schedule)  # every segment, every scale
    per_segment = len(SCALES)
    assert inputs[0] is None  # the image's first stage: the start token only
    assert torch.equal(inputs[1][:, BITS:], torch.zeros_like(inputs[1][:, BITS:]))  # no past before the first frame
    # clip 1 (latent frames 1-2) follows the 1-frame image: that frame, repeated over the clip's frames
    first_clip = inputs[per_segment]
    assert first_clip.shape == (2, 2 * BITS, CLIP, 1, 1)
    assert torch.equal(first_clip[:, :BITS], torch.zeros_like(first_clip[:, :BITS]))
    assert torch.allclose(first_clip[:, BITS:], q.down(full[:, :, :1].expand(-1, -1, CLIP, -1, -1), 1))
    # clip 2 (frames 3-4) follows clip 1, frame for frame, at every scale's grid
    for k, side in enumerate(SCALES):
        stage_input = inputs[2 * per_segment + k]
        assert torch.allclose(stage_input[:, BITS:], q.down(full[:, :, 1:3], side), atol=1e-6)
        own = q.cumulative(out.codes, schedule, k)[:, :, 3:5]
        assert torch.allclose(stage_input[:, :BITS], q.down(own, side), atol=1e-6)


@pytest.mark.parametrize("mode", ["block_causal", "sparse", "factorized"])
def test_greedy_sampling_conditions_the_clip_on_the_first_frames_finest_scale_cached_or_not(mode):
    model = _model(mode)
    q, out, _ = _stream()
    cond = {"class": torch.tensor([3, 7])}
    given = q.bits_of(out)
    per_segment = len(SCALES)
    first_frame = [given[i] if i < per_segment else None for i in range(len(given))]
    complement = [b.clone() if b is not None else None for b in first_frame]
    complement[per_segment - 1] = ~complement[per_segment - 1]
    runs = {}
    for use_cache in (True, False):
        a = model.generate(q, cond, 2, top_k=1, forced=first_frame, use_cache=use_cache)
        b = model.generate(q, cond, 2, top_k=1, forced=complement, use_cache=use_cache)
        runs[use_cache] = a
        assert any(not torch.equal(x, y) for x, y in zip(a[per_segment:], b[per_segment:])), \
            f"{mode}: the sampled clip ignores the first frame's finest bits"
    assert all(torch.equal(x, y) for x, y in zip(runs[True], runs[False])), f"{mode}: cached sampling != recompute"


@pytest.mark.parametrize("mode", ["block_causal", "sparse", "factorized"])
def test_cached_guided_text_sampling_equals_the_recompute_path(mode):
    model = _model(mode, text_vocab=12)
    q = MultiScaleBSQ(BITS, SCALES, CLIP)
    cond = {"class": torch.tensor([3, 7]), "text": torch.tensor([[3, 4, 0], [5, 0, 0]])}
    gen = lambda **kw: model.generate(q, cond, 2, cfg=2.5, generator=torch.Generator().manual_seed(4), **kw)  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(gen(), gen(use_cache=False)))


# ---- the sparse mode's reach over depth ----------------------------------------------------------------------------

def _measured_stage_reach(model, query_stage: int) -> list[int]:
    """The stages whose input moves ``query_stage``'s logits (one stage's input perturbed at a time)."""
    torch.manual_seed(1)
    inputs = [None] + [torch.randn(1, 2 * BITS, st.frames, st.side, st.side) for st in model.schedule.stages[1:]]
    base = model(inputs, {"class": torch.tensor([2])}).detach()
    lo, hi = model.bounds[query_stage], model.bounds[query_stage + 1]
    seen = []
    for j in range(1, len(inputs)):
        moved = [t.clone() if t is not None else None for t in inputs]
        moved[j] = moved[j] + 1.0
        if float((model(moved, {"class": torch.tensor([2])}) - base)[:, lo:hi].detach().abs().max()) > 0:
            seen.append(j)
    return seen


@pytest.mark.parametrize("depth, expected", [(1, [8, 9]), (2, [5, 8, 9]), (3, [2, 5, 8, 9])])
def test_sparse_reach_chains_back_one_segment_per_layer_as_its_transitive_closure_says(depth, expected):
    torch.manual_seed(0)
    model = USAM(USAMConfig(BITS, SCALES, 4, 1, width=32, depth=depth, heads=2, attention="sparse", num_classes=10)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    query = 9  # the first scale of the 4th segment (scales 1-2-4, clips of 1 latent frame)
    assert _measured_stage_reach(model, query) == expected
    closure = attention_reach(model.schedule, "sparse", depth)
    lo, hi = model.bounds[query], model.bounds[query + 1]
    by_closure = [j for j in range(1, len(model.schedule.stages))
                  if closure[lo:hi, model.bounds[j]:model.bounds[j + 1]].any()]
    assert by_closure == expected


# ---- the null text under inference ---------------------------------------------------------------------------------

def test_an_empty_text_encodes_to_finite_zeros_in_eval_mode_without_gradients():
    model = _model("block_causal", text_vocab=12)
    with torch.no_grad():
        memory, mask, pooled = model.text(torch.tensor([[0, 0, 0], [4, 5, 0]]))
    assert torch.isfinite(memory).all() and torch.isfinite(pooled).all()
    assert torch.equal(memory[0], torch.zeros_like(memory[0])) and torch.equal(pooled[0], torch.zeros_like(pooled[0]))
    assert not mask[0].any() and float(pooled[1].abs().max()) > 0


def test_a_guided_text_sample_is_not_degenerate():
    model = _model("block_causal", text_vocab=12)
    q = MultiScaleBSQ(BITS, SCALES, CLIP)
    cond = {"class": torch.tensor([3, 7]), "text": torch.tensor([[3, 4, 0], [5, 0, 0]])}
    bits = model.generate(q, cond, 2, cfg=3.0, generator=torch.Generator().manual_seed(0))
    share = float(torch.cat([b.flatten() for b in bits]).float().mean())
    assert 0.2 < share < 0.8, f"share of +1 bits {share:.3f}: guided text sampling is degenerate"
    null = model.generate(q, model.null_condition(2, torch.device("cpu")), 2, generator=torch.Generator().manual_seed(0))
    null_share = float(torch.cat([b.flatten() for b in null]).float().mean())
    assert 0.2 < null_share < 0.8, f"share of +1 bits {null_share:.3f} under the null text"


@pytest.mark.parametrize("depth, moved", [(1, [1, 2]), (2, [1, 2, 3])])
def test_with_sparse_attention_an_older_segments_finest_code_arrives_one_layer_per_segment_between(depth, moved):
    torch.manual_seed(0)
    model = USAM(USAMConfig(BITS, SCALES, 4, 1, width=32, depth=depth, heads=2, attention="sparse", num_classes=10)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    q = MultiScaleBSQ(BITS, SCALES, 1)
    out = q(torch.randn(2, BITS, 4, 4, 4))
    cond = {"class": torch.tensor([3, 7])}
    base = model(q.next_scale_inputs(out.codes, model.schedule), cond)
    flipped = model(q.next_scale_inputs(_flip_finest(out.codes, 0), model.schedule), cond)
    changed = _changed_stages(model, flipped, base)
    per_segment = len(SCALES)
    segments_moved = [k for k in range(4) if any(changed[k * per_segment:(k + 1) * per_segment])]
    assert segments_moved == moved
