"""Raster-order autoregression over the same token stream: one token per forward pass.

The standard autoregressive baseline: the tokens of the USAM stream, in the same order,
predicted one after another with a causal mask (each token's input is the previous token's
bits). Same blocks, width and bitwise head as USAM, so sampling speed compares the orders,
not the models.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from usam.models.usam import PRECISIONS, Block, KVCache, RMSNorm, sample_bits


class RasterAR(nn.Module):
    def __init__(self, bits: int, tokens: int, width: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, num_classes: int = 0, cond_dropout: float = 0.1):
        super().__init__()
        self.bits, self.tokens, self.width, self.num_classes = bits, tokens, width, num_classes
        self.cond_dropout = cond_dropout
        self.in_proj = nn.Linear(bits, width)
        self.start = nn.Parameter(torch.randn(width) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.class_embed = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, True, dropout, 0.0, cross=False) for _ in range(depth))
        self.head_norm = RMSNorm(width)
        self.head = nn.Linear(width, 2 * bits)
        self.register_buffer("mask", torch.ones(tokens, tokens, dtype=torch.bool).tril(), persistent=False)

    def _cond(self, classes: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """The class embedding; ``None`` is the null class (index ``num_classes``), which training also sees
        for a ``cond_dropout`` share of samples, so classifier-free guidance has an unconditional model."""
        if self.class_embed is None:
            return torch.zeros(batch, self.width, device=device)
        if classes is None:
            classes = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        elif self.training and self.cond_dropout > 0:
            drop = torch.rand(classes.shape, device=classes.device) < self.cond_dropout
            classes = torch.where(drop, torch.full_like(classes, self.num_classes), classes)
        return self.class_embed(classes)

    def _blocks(self, x, c, lo: int, hi: int, caches=None) -> torch.Tensor:
        tok_cond = torch.nn.functional.silu(c[:, None, :]).expand(-1, hi - lo, -1)
        mask = self.mask[lo:hi, :hi] if caches is not None else self.mask[lo:hi, lo:hi]
        for i, block in enumerate(self.blocks):
            x = block(x, tok_cond, mask, None, None, None, caches[i] if caches is not None else None)
        return self.head(self.head_norm(x)).view(x.shape[0], hi - lo, self.bits, 2).float()

    def forward(self, bits: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced: bits (B, L, d) bool -> logits (B, L, d, 2), token t predicted from tokens < t."""
        b = bits.shape[0]
        c = self._cond(classes, b, bits.device)
        prev = self.in_proj(bits[:, :-1].float() * 2 - 1)
        x = torch.cat([(self.start + c)[:, None], prev], dim=1) + self.pos[:, : bits.shape[1]]
        return self._blocks(x, c, 0, bits.shape[1])

    def guidance(self, cfg: float, ramp: str) -> list[float]:
        """The guidance scale per token: ``cfg`` throughout, or ``linear`` from 1 at the first token to ``cfg``
        at the last (as USAM ramps it over scales)."""
        if ramp == "constant":
            return [cfg] * self.tokens
        if ramp == "linear":
            return [1 + (cfg - 1) * t / max(self.tokens - 1, 1) for t in range(self.tokens)]
        raise ValueError(f"unknown guidance ramp {ramp!r}; use constant or linear")

    @torch.no_grad()
    def generate(self, batch: int, classes: torch.Tensor | None = None, temperature: float = 1.0,
                 generator: torch.Generator | None = None, use_cache: bool = True, cfg: float = 1.0,
                 cfg_ramp: str = "constant", precision: str = "fp32") -> torch.Tensor:
        """(B, L, d) bool bits, one token per forward pass (with a KV cache unless ``use_cache=False``). With
        ``cfg != 1`` and classes, the conditional and null-class streams run as one doubled batch and each
        token's logits are ``null + scale * (cond - null)``. ``precision="bf16"``: bf16 autocast for the matmuls,
        as USAM's sampler offers."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: use one of {PRECISIONS}")
        device = self.start.device
        scales = self.guidance(cfg, cfg_ramp)
        guided = classes is not None and self.class_embed is not None and any(g != 1.0 for g in scales)
        if guided:
            classes = torch.cat([classes, torch.full_like(classes, self.num_classes)])
        rows = 2 * batch if guided else batch
        c = self._cond(classes, rows, device)
        caches = [KVCache(self.tokens) for _ in self.blocks] if use_cache else None
        out = torch.zeros(batch, self.tokens, self.bits, dtype=torch.bool, device=device)
        inputs = (self.start + c)[:, None] + self.pos[:, :1]
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        for t in range(self.tokens):
            with autocast:
                if use_cache:
                    logits = self._blocks(inputs, c, t, t + 1, caches)
                else:
                    logits = self._blocks(inputs, c, 0, t + 1)[:, -1:]
            if guided:
                cond, null = logits[:batch], logits[batch:]
                logits = null + scales[t] * (cond - null)
            bits = sample_bits(logits, temperature, 0, 1.0, generator)[:, 0]
            out[:, t] = bits
            if t + 1 < self.tokens:
                nxt = self.in_proj(bits.float() * 2 - 1)[:, None] + self.pos[:, t + 1:t + 2]
                nxt = nxt.repeat(2, 1, 1) if guided else nxt
                inputs = nxt if use_cache else torch.cat([inputs, nxt], dim=1)  # the cache holds the earlier ones
        return out
