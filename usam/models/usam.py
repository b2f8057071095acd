"""The USAM spacetime autoregressive transformer: next-scale prediction inside a clip, next-clip across clips.

The token stream follows the tokenizer's :class:`ScaleSchedule`: the first frame's image
scales, then each clip's scales (full time at every scale). The input of a stage
(:class:`~usam.models.bsq.StageInputs`) is the cumulative code map of its segment's earlier
scales together with the previous segment's full reconstruction (every scale, the finest
included), both downsampled to the stage's grid and projected to the width; a segment's first
scale adds a start token and the condition. So a clip is conditioned on the whole
reconstruction of the frames before it in every attention mode. A bitwise head predicts every
bit of every token of the stage at once. Which earlier tokens a token may attend to is the
``attention`` mode, one boolean mask built once from the schedule:

- ``block_causal`` (VAR): every token of every earlier stage, and its own stage;
- ``sparse`` (InfinityStar): its own stage and the largest scale of the previous segment. Over
  the model's depth D the reach chains (:func:`attention_reach`): a stage of segment k reaches
  the largest scales of segments k-1 .. k-D; its own segment's earlier scales and the previous
  segment's full code reach it through its input map, and the code of segment k-j after j-1
  layers (through the inputs of the segments between);
- ``factorized``: spatial attention within its own frame plus causal temporal attention
  across frames at its own position, and earlier stages up to its own frame.

Blocks: pre-norm RMSNorm, QK-norm, SwiGLU, residual paths with dropout and stochastic depth,
and adaptive norms modulated by the condition and the stage (clip/scale) index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from usam.models.bsq import ScaleSchedule, StageInputs
from usam.models.evaluators import drop_path

ATTENTION_MODES = ("block_causal", "sparse", "factorized")
MODULATIONS = ("per_token", "per_stage")  # how sampling computes a stage's adaptive-norm modulation
PRECISIONS = ("fp32", "bf16")  # sampling's matmul precision (bf16: autocast)


def token_layout(schedule: ScaleSchedule) -> dict[str, torch.Tensor]:
    """Per token, in stream order (stage, then frame, row, column): its stage, segment, scale,
    global latent frame, and row/column rescaled to the finest grid (floats, for RoPE)."""
    cols: dict[str, list] = {k: [] for k in ("stage", "segment", "scale", "frame", "y", "x")}
    for i, st in enumerate(schedule.stages):
        f, yy, xx = torch.meshgrid(torch.arange(st.frames), torch.arange(st.side), torch.arange(st.side), indexing="ij")
        n = st.tokens
        cols["stage"].append(torch.full((n,), i))
        cols["segment"].append(torch.full((n,), st.segment))
        cols["scale"].append(torch.full((n,), st.scale))
        cols["frame"].append(f.flatten() + st.t0)
        ratio = schedule.grid / st.side
        cols["y"].append((yy.flatten().float() + 0.5) * ratio - 0.5)
        cols["x"].append((xx.flatten().float() + 0.5) * ratio - 0.5)
    return {k: torch.cat(v) for k, v in cols.items()}


def attention_mask(schedule: ScaleSchedule, mode: str) -> torch.Tensor:
    """(L, L) bool, True where query token i may attend to key token j."""
    lay = token_layout(schedule)
    s_i, s_j = lay["stage"][:, None], lay["stage"][None, :]
    if mode == "block_causal":
        return s_j <= s_i
    if mode == "sparse":
        last = len(schedule.scales) - 1
        prev_largest = (lay["segment"][None, :] == lay["segment"][:, None] - 1) & (lay["scale"][None, :] == last)
        return (s_j == s_i) | prev_largest
    if mode == "factorized":
        f_i, f_j = lay["frame"][:, None], lay["frame"][None, :]
        same_pos = (lay["y"][:, None] == lay["y"][None, :]) & (lay["x"][:, None] == lay["x"][None, :])
        own = (s_j == s_i) & ((f_j == f_i) | (same_pos & (f_j <= f_i)))
        return own | ((s_j < s_i) & (f_j <= f_i))
    raise ValueError(f"unknown attention mode {mode!r}; use one of {', '.join(ATTENTION_MODES)}")


def attention_reach(schedule: ScaleSchedule, mode: str, depth: int) -> torch.Tensor:
    """(L, L) bool, True where key token j can reach query token i's output through ``depth`` attention
    layers: the transitive closure of the one-layer mask over ``depth`` hops (a token always sees itself)."""
    one = attention_mask(schedule, mode).float()
    reach = one
    for _ in range(depth - 1):
        reach = ((reach @ one) > 0).float()
    return reach > 0


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype)
        return y * self.weight if self.weight is not None else y


class SpacetimeRoPE(nn.Module):
    """Rotary embedding over four axes (scale, frame, row, column): each gets a quarter of the head dim."""

    def __init__(self, head_dim: int, base: float = 100.0):
        super().__init__()
        if head_dim % 8:
            raise ValueError(f"RoPE over 4 axes needs a head dim divisible by 8, got {head_dim}")
        quarter = head_dim // 4
        self.register_buffer("freqs", base ** (-torch.arange(0, quarter, 2).float() / quarter), persistent=False)

    def angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (L, 4) -> the rotation's two factors, each (L, head_dim): ``cos`` repeated per pair, and
        ``sin`` per pair with the first element negated: ``(-sin, sin)``."""
        ang = torch.cat([positions[:, a:a + 1].float() * self.freqs for a in range(4)], dim=-1)
        cos, sin = ang.cos(), ang.sin()
        return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate each pair (x1, x2) of the head dim to (x1 cos - x2 sin, x1 sin + x2 cos).

        Without autograd (sampling) it runs as ``x * cos`` plus the pair-swapped ``x`` times ``(-sin, sin)``:
        the same products and sums, so the same bits, in three kernels instead of seven. With autograd it
        keeps the pair-wise form, whose backward sums the gradients in the order the trained weights saw."""
        if not (torch.is_grad_enabled() and x.requires_grad):
            swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
            return (x * cos + swapped * sin).to(x.dtype)
        c, s = cos[..., 0::2], sin[..., 1::2]
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2).to(x.dtype)


class KVCache:
    """One block's keys and values of the tokens seen so far while sampling, in buffers allocated once for
    the whole stream (``capacity`` tokens): a step writes its keys in place and attends to a view of the
    filled part, so no step re-allocates or copies what the earlier steps cached."""

    def __init__(self, capacity: int):
        self.capacity, self.length = capacity, 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, H, n, D) keys and values; returns every cached one so far, (B, H, length, D) views."""
        b, h, n, d = k.shape
        if self.k is None:
            self.k, self.v = k.new_empty(b, h, self.capacity, d), v.new_empty(b, h, self.capacity, d)
        end = self.length + n
        if end > self.capacity:
            raise ValueError(f"the KV cache holds {self.capacity} tokens; {end} were given")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, qk_norm: bool, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.dropout = dropout

    def forward(self, x, mask, rope=None, cache: KVCache | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q, k = SpacetimeRoPE.apply(q, cos, sin), SpacetimeRoPE.apply(k, cos, sin)
        if cache is not None:  # sampling: keys and values of every earlier stage stay cached
            k, v = cache.extend(k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class CrossAttention(nn.Module):
    """Tokens attend to the text (or context-frame) tokens of their sample."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * width, bias=False)
        self.proj = nn.Linear(width, width)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, memory, memory_mask) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(memory).view(b, memory.shape[1], 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = memory_mask[:, None, None, :]  # (B, 1, 1, M): padding never attended
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = torch.nan_to_num(out)  # a sample with no memory token at all (dropped condition) gets zeros
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class SwiGLU(nn.Module):
    def __init__(self, width: int, ratio: float, dropout: float):
        super().__init__()
        hidden = int(2 * ratio * width / 3 + 7) // 8 * 8
        self.gate_up = nn.Linear(width, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(self.drop(F.silu(gate) * up))


class Block(nn.Module):
    """Pre-norm block; the norms are adaptive: shift, scale and gate come from the token's condition."""

    def __init__(self, width, heads, mlp_ratio, qk_norm, dropout, drop_rate, cross: bool):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(width, affine=False), RMSNorm(width, affine=False)
        self.attn = SelfAttention(width, heads, qk_norm, dropout)
        self.cross = CrossAttention(width, heads) if cross else None
        self.norm_cross = RMSNorm(width) if cross else None
        self.mlp = SwiGLU(width, mlp_ratio, dropout)
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)  # starts as a plain pre-norm block with unit gates
        nn.init.zeros_(self.ada.bias)
        self.drop = nn.Dropout(dropout)
        self.drop_rate = drop_rate

    def forward(self, x, cond, mask, rope=None, memory=None, memory_mask=None, cache=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond).chunk(6, dim=-1)
        h = self.attn(self.norm1(x) * (1 + scale1) + shift1, mask, rope, cache)
        x = x + drop_path(self.drop((1 + gate1) * h), self.drop_rate, self.training)
        if self.cross is not None and memory is not None:
            x = x + self.cross(self.norm_cross(x), memory, memory_mask)
        h = self.mlp(self.norm2(x) * (1 + scale2) + shift2)
        return x + drop_path(self.drop((1 + gate2) * h), self.drop_rate, self.training)


@dataclass
class Condition:
    """A batch's condition, ready for the blocks: the vector for the adaptive norms, the cross-attention
    memory (text and context tokens) with its mask, and the context latent for the clip inputs' skip path."""

    c: torch.Tensor
    memory: torch.Tensor | None
    memory_mask: torch.Tensor | None
    context: torch.Tensor | None


class TextEncoder(nn.Module):
    """A small learned text encoder over word ids (0 = padding): embeddings + transformer layers."""

    def __init__(self, vocab: int, width: int, heads: int, layers: int = 2, max_len: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, width, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(1, max_len, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids (B, n) -> memory (B, n, C), its mask (True = a word), pooled (B, C) (zeros for an empty text)."""
        mask = ids > 0
        h = self.embed(ids) + self.pos[:, : ids.shape[1]]
        # An all-padding row (the null text) would attend to nothing: NaN, on the inference fast path too.
        # Let it attend to its first (padding) position; its output is zeroed below either way.
        padding = ~mask
        padding[:, 0] &= mask.any(1)
        h = self.norm(self.layers(h, src_key_padding_mask=padding))
        h = torch.where(mask[..., None], h, torch.zeros((), dtype=h.dtype, device=h.device))
        pooled = h.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return h, mask, pooled


@dataclass(frozen=True)
class USAMConfig:
    """Everything that shapes a USAM. Stored beside its weights (as the ``model_kwargs`` dict, without the
    runtime switch ``grad_checkpointing``), so an exported checkpoint rebuilds exactly its model."""

    bits: int
    scales: list[int]
    latent_frames: int
    clip_frames: int | None = None
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    drop_path: float = 0.0
    attention: str = "block_causal"
    positions: str = "rope"
    qk_norm: bool = True
    num_classes: int = 0
    num_actions: int = 0
    text_vocab: int = 0
    text_len: int = 16
    context: bool = False
    cond_dropout: float = 0.1
    grad_checkpointing: bool = False


class USAM(nn.Module):
    """The spacetime autoregressive transformer over a fixed :class:`ScaleSchedule`.

    Conditions (any combination; 0 / False turns one off): ``num_classes`` class labels,
    ``num_actions`` action cues, ``text_vocab`` word ids through a learned text encoder
    (cross-attention + pooled into the adaptive norms), and ``context`` frames: the first
    frame's continuous latent (B, d, 1, h, w), reaching every token through cross-attention and
    every clip stage's input through a skip connection (its tokens are forced when sampling).
    Index ``num_classes`` / ``num_actions``, an all-padding text and an all-zero context are the
    null condition of classifier-free guidance.
    """

    def __init__(self, config: USAMConfig):
        super().__init__()
        self.config = c = config
        bits, width, depth, heads, attention, positions = c.bits, c.width, c.depth, c.heads, c.attention, c.positions
        num_classes, num_actions, cond_dropout, context = c.num_classes, c.num_actions, c.cond_dropout, c.context
        self.schedule = ScaleSchedule.build(c.scales, c.latent_frames, c.clip_frames)
        self.bits, self.width, self.positions = bits, width, positions
        self.num_classes, self.num_actions, self.cond_dropout = num_classes, num_actions, cond_dropout
        self.grad_checkpointing = c.grad_checkpointing
        layout = token_layout(self.schedule)
        self.register_buffer("mask", attention_mask(self.schedule, attention), persistent=False)
        self.register_buffer("stage_of_token", layout["stage"], persistent=False)
        self.register_buffer("rope_positions", torch.stack(
            [layout["scale"].float(), layout["frame"].float(), layout["y"], layout["x"]], dim=1), persistent=False)
        self._rope_memo: dict = {}
        bounds = [0]
        for st in self.schedule.stages:
            bounds.append(bounds[-1] + st.tokens)
        self.bounds = bounds
        stages = len(self.schedule.stages)

        self.in_proj = nn.Linear(2 * bits, width)  # the segment's own cumulative code and the previous segment's
        self.start = nn.Parameter(torch.randn(2, width) * 0.02)  # image segment, clip segment
        self.stage_embed = nn.Embedding(stages, width)  # clip/scale index: feeds the adaptive norms
        if positions == "rope":
            self.rope = SpacetimeRoPE(width // heads)
        elif positions == "learned":
            self.rope = None
            self.pos = nn.Parameter(torch.randn(1, bounds[-1], width) * 0.02)
            self.level = nn.Embedding(len(self.schedule.scales), width)
        else:
            raise ValueError(f"unknown positions {positions!r}; use rope or learned")
        self.class_embed = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.action_embed = nn.Embedding(num_actions + 1, width) if num_actions else None
        self.text = TextEncoder(c.text_vocab, width, heads, max_len=c.text_len) if c.text_vocab else None
        self.context_memory = nn.Linear(bits, width) if context else None
        self.context_skip = nn.Linear(bits, width) if context else None
        if context:
            nn.init.zeros_(self.context_skip.weight)
            nn.init.zeros_(self.context_skip.bias)
        cross = self.text is not None or context
        rates = [c.drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(width, heads, c.mlp_ratio, c.qk_norm, c.dropout, r, cross=cross) for r in rates)
        self.head_norm = RMSNorm(width, affine=False)
        self.head_ada = nn.Linear(width, 2 * width)
        nn.init.zeros_(self.head_ada.weight)
        nn.init.zeros_(self.head_ada.bias)
        self.head = nn.Linear(width, 2 * bits)  # one logit pair per bit: no 2^d softmax

    # ---- conditions ----------------------------------------------------------------------------------------------

    def null_condition(self, batch: int, device) -> dict[str, torch.Tensor]:
        cond = {}
        if self.class_embed is not None:
            cond["class"] = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if self.action_embed is not None:
            cond["action"] = torch.full((batch,), self.num_actions, dtype=torch.long, device=device)
        if self.text is not None:
            cond["text"] = torch.zeros(batch, 1, dtype=torch.long, device=device)
        if self.context_memory is not None:
            grid = self.schedule.grid
            cond["context"] = torch.zeros(batch, self.bits, 1, grid, grid, device=device)
        return cond

    def drop_condition(self, cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Classifier-free guidance training: each sample loses its whole condition with probability cond_dropout."""
        if not self.training or self.cond_dropout == 0 or not cond:
            return cond
        batch = next(iter(cond.values())).shape[0]
        device = next(iter(cond.values())).device
        drop = torch.rand(batch, device=device) < self.cond_dropout
        null = self.null_condition(batch, device)
        out = {}
        for key, value in cond.items():
            if key in ("text", "context"):
                keep = ~drop.view(-1, *([1] * (value.ndim - 1)))
                out[key] = value * keep
            else:
                out[key] = torch.where(drop, null[key], value)
        return out

    def _condition(self, cond: dict[str, torch.Tensor], batch: int, device) -> "Condition":
        c = torch.zeros(batch, self.width, device=device)
        memory = memory_mask = None
        if self.class_embed is not None:
            c = c + self.class_embed(cond["class"])
        if self.action_embed is not None:
            c = c + self.action_embed(cond["action"])
        if self.text is not None:
            memory, memory_mask, pooled = self.text(cond["text"])
            c = c + pooled
        if self.context_memory is not None:
            ctx = cond["context"]  # (B, d, 1, h, w); all zeros is "no context"
            tokens = ctx.flatten(2).transpose(1, 2).to(self.context_memory.weight.dtype)
            given = ctx.flatten(1).abs().amax(1) > 0
            ctx_memory = self.context_memory(tokens)
            ctx_mask = given[:, None].expand(-1, tokens.shape[1])
            memory = ctx_memory if memory is None else torch.cat([memory, ctx_memory], dim=1)
            memory_mask = ctx_mask if memory_mask is None else torch.cat([memory_mask, ctx_mask], dim=1)
            return Condition(c, memory, memory_mask, ctx)
        return Condition(c, memory, memory_mask, None)

    # ---- the stream ----------------------------------------------------------------------------------------------

    def _embed(self, stage_inputs: list[torch.Tensor | None], stages: range, batch: int, cond: "Condition") -> torch.Tensor:
        parts = []
        for i in stages:
            st, inp = self.schedule.stages[i], stage_inputs[i - stages.start]
            tok = (self.start[0 if st.segment == 0 else 1] + cond.c)[:, None, :].expand(batch, st.tokens, self.width) \
                if st.scale == 0 else 0  # a segment's first scale: its start token plus the condition
            if inp is not None:
                channels = self.in_proj.in_features
                tok = tok + self.in_proj(inp.permute(0, 2, 3, 4, 1).reshape(batch, st.tokens, channels)
                                         .to(self.in_proj.weight.dtype))
            if self.context_skip is not None and st.segment > 0:  # the given frame, at this stage's grid, every frame
                ctx = F.adaptive_avg_pool3d(cond.context.float(), (1, st.side, st.side)).expand(-1, -1, st.frames, -1, -1)
                tok = tok + self.context_skip(ctx.permute(0, 2, 3, 4, 1).reshape(batch, st.tokens, self.bits).to(tok.dtype))
            parts.append(tok)
        x = torch.cat(parts, dim=1)
        lo, hi = self.bounds[stages.start], self.bounds[stages.stop]
        if self.rope is None:
            x = x + self.pos[:, lo:hi] + self.level(self.rope_positions[lo:hi, 0].long())[None]
        return x

    def _run(self, x, cond: "Condition", lo: int, hi: int, caches=None, per_stage: bool = False) -> torch.Tensor:
        """Blocks over tokens lo..hi (all earlier tokens are in ``caches`` when sampling). ``per_stage``: lo..hi is
        one stage, whose tokens share their condition, so the adaptive norms' modulation is computed once per
        sample, (B, 1, C), and broadcast over the stage's tokens."""
        memory, memory_mask = cond.memory, cond.memory_mask
        tokens = self.stage_of_token[lo:lo + 1] if per_stage else self.stage_of_token[lo:hi]
        tok_cond = F.silu(cond.c[:, None, :] + self.stage_embed(tokens)[None])
        key_lo = 0 if caches is not None else lo
        mask = self.mask[lo:hi, key_lo:hi]
        rope = self._rope(lo, hi)
        for i, block in enumerate(self.blocks):
            cache = caches[i] if caches is not None else None
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, tok_cond, mask, rope, memory, memory_mask, cache,
                                                      use_reentrant=False)
            else:
                x = block(x, tok_cond, mask, rope, memory, memory_mask, cache)
        shift, scale = self.head_ada(tok_cond).chunk(2, dim=-1)
        logits = self.head(self.head_norm(x) * (1 + scale) + shift)
        return logits.view(x.shape[0], hi - lo, self.bits, 2).float()

    def _rope(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The rotary angles of tokens lo..hi, computed once per span and device (they depend on nothing else)."""
        if self.rope is None:
            return None
        key = (lo, hi, self.rope_positions.device)
        if key not in self._rope_memo:
            self._rope_memo[key] = self.rope.angles(self.rope_positions[lo:hi])
        return self._rope_memo[key]

    def forward(self, stage_inputs: list[torch.Tensor | None], cond: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Teacher-forced pass over the whole stream: per-stage inputs (``MultiScaleBSQ.next_scale_inputs``)
        -> bit logits (B, L, d, 2)."""
        batch = next(t for t in stage_inputs if t is not None).shape[0] if any(t is not None for t in stage_inputs) else 1
        device = self.start.device
        cond = self.drop_condition(cond or {})
        if cond:
            batch = next(iter(cond.values())).shape[0]
        state = self._condition(cond or self.null_condition(batch, device), batch, device)
        x = self._embed(stage_inputs, range(len(self.schedule.stages)), batch, state)
        return self._run(x, state, 0, self.bounds[-1])

    def stage_logits(self, i: int, stage_input, state: "Condition", caches, modulation: str = "per_token") -> torch.Tensor:
        """One stage's logits given every earlier stage's keys/values in ``caches`` (a :class:`KVCache` per block).
        ``modulation="per_stage"`` computes the stage's modulation once per sample instead of once per token: the
        same values up to float rounding, a third fewer FLOPs in the blocks' matmuls."""
        x = self._embed([stage_input], range(i, i + 1), state.c.shape[0], state)
        return self._run(x, state, self.bounds[i], self.bounds[i + 1], caches, per_stage=modulation == "per_stage")

    def flops_per_sample(self, quantizer) -> int:
        """FLOPs of one sample's whole stream in one pass (what the cached stages of a sampling run add up to)."""
        from torch.utils.flop_counter import FlopCounterMode

        grid, device = self.schedule.grid, self.start.device
        codes = quantizer(torch.zeros(1, self.bits, self.schedule.latent_frames, grid, grid, device=device)).codes
        was_training = self.training
        self.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            self(quantizer.next_scale_inputs(codes, self.schedule), self.null_condition(1, device))
        self.train(was_training)
        return int(counter.get_total_flops())

    def split(self, logits_or_bits: torch.Tensor) -> list[torch.Tensor]:
        """Stream-ordered (B, L, d[, 2]) -> per-stage (B, d, frames, side, side[, 2]) chunks."""
        return self.schedule.split(logits_or_bits)

    def flatten(self, per_stage: list[torch.Tensor]) -> torch.Tensor:
        """Per-stage (B, d, frames, side, side) -> stream-ordered (B, L, d)."""
        return self.schedule.flatten(per_stage)

    # ---- sampling ------------------------------------------------------------------------------------------------

    def guidance(self, cfg: float, ramp: str) -> list[float]:
        """Per-stage guidance scale: ``constant``, or ``linear`` from 1 at a segment's first scale to ``cfg``
        at its last (VAR ramps guidance with scale)."""
        last = max(len(self.schedule.scales) - 1, 1)
        if ramp == "constant":
            return [cfg for _ in self.schedule.stages]
        if ramp == "linear":
            return [1 + (cfg - 1) * st.scale / last for st in self.schedule.stages]
        raise ValueError(f"unknown guidance ramp {ramp!r}; use constant or linear")

    @torch.no_grad()
    def generate(self, quantizer, cond: dict[str, torch.Tensor], batch: int, *, cfg: float = 1.0,
                 cfg_ramp: str = "linear", temperature=1.0, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None, forced: list[torch.Tensor | None] | None = None,
                 use_cache: bool = True, modulation: str = "per_token", precision: str = "fp32") -> list[torch.Tensor]:
        """Sample per-stage bits (B, d, frames, side, side): one forward pass per stage, the whole stage in parallel.

        ``temperature``: one value, or one per scale. ``top_k=1`` (or ``top_p`` below a bit's larger
        probability) takes that bit's likelier value; with two outcomes per bit that is all they can do.
        ``forced``: per-stage bits to keep instead of sampling (context frames: e.g. the first frame's
        stages for image-to-video); None entries are sampled. ``use_cache=False`` recomputes the whole
        prefix at every stage (for checks and benchmarks).

        ``modulation``: ``per_token`` (the teacher-forced pass's computation; what the pipeline samples with) or
        ``per_stage`` (each stage's condition once per sample: the same values up to float rounding, fewer
        FLOPs). ``precision``: ``fp32``, or ``bf16`` autocast for the matmuls (logits and sampling stay fp32).
        Either changes the rounding, so the sampled bits of a seed may differ from the defaults'.
        """
        if modulation not in MODULATIONS or precision not in PRECISIONS:
            raise ValueError(f"modulation {modulation!r} / precision {precision!r}: use one of {MODULATIONS} / {PRECISIONS}")
        device = self.start.device
        guided = cfg != 1.0 and bool(cond)
        if guided:
            null = self.null_condition(batch, device)
            full = {}
            for k in cond:
                u, v = cond[k], null[k]
                if k == "text":
                    v = torch.zeros_like(u)
                full[k] = torch.cat([u, v])
            cond = full
        rows = 2 * batch if guided else batch
        state = self._condition(cond or self.null_condition(rows, device), rows, device)
        scales = self.guidance(cfg, cfg_ramp)
        temps = list(temperature) if isinstance(temperature, (list, tuple)) else [temperature]
        if len(temps) == 1:
            temps = temps * len(self.schedule.scales)
        if len(temps) != len(self.schedule.scales):
            raise ValueError(f"{len(temps)} temperatures for {len(self.schedule.scales)} scales: give one, or one per scale")
        caches = [KVCache(self.bounds[-1]) for _ in self.blocks] if use_cache else None
        inputs, out = [], []
        builder = StageInputs(quantizer, self.schedule)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        for i, st in enumerate(self.schedule.stages):
            inp = builder.next(st)
            inputs.append(None if inp is None else (torch.cat([inp, inp]) if guided else inp))
            with autocast:
                if use_cache:
                    logits = self.stage_logits(i, inputs[-1], state, caches, modulation)
                else:
                    x = self._embed(inputs, range(0, i + 1), rows, state)
                    logits = self._run(x, state, 0, self.bounds[i + 1])[:, self.bounds[i]:]
            if guided:
                cond_l, uncond_l = logits.chunk(2)
                logits = uncond_l + scales[i] * (cond_l - uncond_l)
            bits = sample_bits(logits, temps[st.scale], top_k, top_p, generator)
            bits = bits.view(batch, st.frames, st.side, st.side, self.bits).permute(0, 4, 1, 2, 3)
            if forced is not None and forced[i] is not None:
                bits = forced[i].to(device)
            out.append(bits)
            builder.add(torch.where(bits, quantizer.unit, -quantizer.unit).float())
        return out


def sample_bits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """(B, n, d, 2) logit pairs -> (B, n, d) bool bits (True = +1)."""
    p_one = torch.softmax(logits.float() / max(temperature, 1e-6), dim=-1)[..., 1]
    greedy = p_one > 0.5
    if temperature == 0 or top_k == 1:
        return greedy
    drawn = torch.rand(p_one.shape, generator=generator, device=p_one.device) < p_one
    if top_p < 1.0:  # nucleus over two outcomes: a bit whose likelier value alone covers top_p is not sampled
        sure = torch.maximum(p_one, 1 - p_one) >= top_p
        drawn = torch.where(sure, greedy, drawn)
    return drawn
