"""Multi-scale residual binary spherical quantization (BSQ) over a spacetime scale schedule.

The latent video (B, d, t, h, w) is split into *segments*: the first latent frame (an
image, quantized as an image pyramid) and clips of later latent frames, every scale of
a clip keeping its full time. Inside a segment, each scale quantizes what the scales
before it left over: the residual is area-downsampled to the scale's grid, every channel
becomes one bit (its sign, as +-1/sqrt(d)), and the upsampled code is subtracted.

The sum of all of a segment's codes is its quantized latent, and a prefix of scales is a
coarser one. Every code has the fixed magnitude 1/sqrt(d), so an added scale brings the
latent closer only where the residual it quantizes is large against that magnitude (on a
scale at the full grid: exactly when 1/sqrt(d) < 2 mean|residual|); the latent residual is
not monotone over scales in general. The tokenizer's evaluation reports both per prefix:
the relative latent residual and the decoded PSNR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class Stage:
    """One step of the token stream: scale ``scale`` (grid ``side`` x ``side``) of segment ``segment``,
    covering latent frames ``t0 .. t0 + frames - 1``. Segment 0 is the first frame."""

    segment: int
    scale: int
    t0: int
    frames: int
    side: int

    @property
    def tokens(self) -> int:
        return self.frames * self.side * self.side


@dataclass(frozen=True)
class ScaleSchedule:
    """The spacetime pyramid for a latent video of ``latent_frames`` frames on a ``grid`` x ``grid`` map."""

    scales: tuple[int, ...]  # grid side per scale, increasing, the last == grid
    latent_frames: int
    clip_frames: int  # latent frames per clip after the first frame

    @classmethod
    def build(cls, scales, latent_frames: int, clip_frames: int | None) -> "ScaleSchedule":
        scales = tuple(int(s) for s in scales)
        later = latent_frames - 1
        clip = later if clip_frames is None else int(clip_frames)
        problems = check_schedule(scales, scales[-1] if scales else 0, later, clip)
        if problems:
            raise ValueError("; ".join(problems))
        return cls(scales, latent_frames, clip)

    @property
    def grid(self) -> int:
        return self.scales[-1]

    @property
    def segments(self) -> list[tuple[int, int]]:
        """(first latent frame, frame count) of the image segment, then of each clip."""
        later = self.latent_frames - 1
        clips = [(1 + i * self.clip_frames, self.clip_frames) for i in range(later // self.clip_frames)] if later else []
        return [(0, 1)] + clips

    @cached_property
    def stages(self) -> list[Stage]:
        return [Stage(seg, k, t0, n, side) for seg, (t0, n) in enumerate(self.segments) for k, side in enumerate(self.scales)]

    @property
    def tokens(self) -> int:
        return sum(st.tokens for st in self.stages)

    def flatten(self, per_stage: list[torch.Tensor]) -> torch.Tensor:
        """Per-stage (B, d, frames, side, side) -> stream-ordered (B, L, d)."""
        return torch.cat([t.movedim(1, -1).reshape(t.shape[0], -1, t.shape[1]) for t in per_stage], dim=1)

    def split(self, stream: torch.Tensor) -> list[torch.Tensor]:
        """Stream-ordered (B, L, d[, 2]) -> per-stage (B, d, frames, side, side[, 2]) chunks."""
        out, lo = [], 0
        for st in self.stages:
            chunk = stream[:, lo:lo + st.tokens]
            out.append(chunk.reshape((chunk.shape[0], st.frames, st.side, st.side) + tuple(chunk.shape[2:])).movedim(4, 1))
            lo += st.tokens
        return out


def check_schedule(scales: tuple[int, ...], grid: int, later_frames: int, clip_frames: int) -> list[str]:
    """Why a schedule cannot tile a latent video (empty when it can)."""
    out = []
    if not scales:
        out.append("the scale schedule is empty")
        return out
    if any(b <= a for a, b in zip(scales, scales[1:])):
        out.append(f"scales {list(scales)} are not strictly increasing")
    if scales[-1] != grid:
        out.append(f"the last scale {scales[-1]} must equal the latent grid {grid}")
    if later_frames and (clip_frames < 1 or later_frames % clip_frames):
        out.append(f"{later_frames} later latent frame(s) cannot be split into clips of {clip_frames}")
    return out


@dataclass
class Quantized:
    """What :meth:`MultiScaleBSQ.forward` returns."""

    z_q: torch.Tensor  # (B, d, t, h, w): the sum of every stage's upsampled code (straight-through)
    codes: list[torch.Tensor]  # per stage: (B, d, frames, side, side), every value +-1/sqrt(d)
    commitment: torch.Tensor  # mean squared distance of the encoder output to its quantization
    entropy: torch.Tensor  # per-token bit entropy minus gamma x codebook (bit-marginal) entropy, per stage mean
    bit_balance: list[torch.Tensor]  # per stage: (d,) share of +1 bits
    schedule: ScaleSchedule


class MultiScaleBSQ(nn.Module):
    """Residual BSQ across a :class:`ScaleSchedule`; ``d = bits`` channels, one bit each."""

    def __init__(self, bits: int, scales, clip_frames: int | None, temperature: float = 0.5, gamma: float = 1.0):
        super().__init__()
        self.bits = bits
        self.scales = tuple(scales)
        self.clip_frames = clip_frames
        self.temperature = temperature
        self.gamma = gamma

    @property
    def unit(self) -> float:
        return 1.0 / math.sqrt(self.bits)

    def schedule(self, latent_frames: int) -> ScaleSchedule:
        return ScaleSchedule.build(self.scales, latent_frames, self.clip_frames)

    @staticmethod
    def down(x: torch.Tensor, side: int) -> torch.Tensor:
        """Area-downsample space only (time keeps every frame at every scale)."""
        return x if x.shape[-1] == side else F.adaptive_avg_pool3d(x, (x.shape[2], side, side))

    @staticmethod
    def up(x: torch.Tensor, side: int) -> torch.Tensor:
        if x.shape[-1] == side:
            return x
        b, c, t, h, w = x.shape
        y = F.interpolate(x.transpose(1, 2).reshape(b * t, c, h, w), size=(side, side), mode="bicubic", align_corners=False)
        return y.reshape(b, t, c, side, side).transpose(1, 2)

    def forward(self, z: torch.Tensor) -> Quantized:
        schedule = self.schedule(z.shape[2])
        if z.shape[-1] != schedule.grid or z.shape[-2] != schedule.grid or z.shape[1] != self.bits:
            raise ValueError(f"latent {tuple(z.shape)} does not match {self.bits} bits on a {schedule.grid} grid")
        codes, balance, entropies, parts = [], [], [], []
        for t0, n in schedule.segments:
            residual = z[:, :, t0:t0 + n]
            acc = torch.zeros_like(residual)
            for side in schedule.scales:
                r = self.down(residual, side)
                u = F.normalize(r, dim=1)  # on the unit sphere; the code is its nearest corner
                hard = torch.where(r >= 0, self.unit, -self.unit).to(r.dtype)
                code = hard + (r - r.detach())  # straight-through: the value is exactly +-1/sqrt(d)
                up = self.up(code, residual.shape[-1])
                acc = acc + up
                residual = residual - up
                codes.append(code)
                ent, bal = self._entropy(u)
                entropies.append(ent)
                balance.append(bal)
            parts.append(acc)
        z_q = torch.cat(parts, dim=2)
        commitment = F.mse_loss(z, z_q.detach())
        return Quantized(z_q, codes, commitment, torch.stack(entropies).mean(), balance, schedule)

    @torch.no_grad()
    def self_correction(self, z: torch.Tensor, max_flip: float, generator: torch.Generator | None = None
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Bitwise self-correction targets: quantize ``z`` scale by scale, but flip a random share
        (uniform in [0, max_flip], drawn per sample and stage) of each stage's bits before it enters
        the running sum, so later residuals are computed from the corrupted history.

        Returns (inputs, targets) per stage: the corrupted codes a model sees through its inputs,
        and the codes that correct the corrupted history (what it must predict).
        """
        schedule = self.schedule(z.shape[2])
        corrupted, targets = [], []
        for t0, n in schedule.segments:
            residual = z[:, :, t0:t0 + n]
            for side in schedule.scales:
                r = self.down(residual, side)
                code = torch.where(r >= 0, self.unit, -self.unit).to(z.dtype)
                targets.append(code)
                if max_flip > 0:
                    share = torch.rand(z.shape[0], 1, 1, 1, 1, generator=generator, device=z.device) * max_flip
                    flip = torch.rand(code.shape, generator=generator, device=z.device) < share
                    code = torch.where(flip, -code, code)
                corrupted.append(code)
                residual = residual - self.up(code, residual.shape[-1])
        return corrupted, targets

    def _entropy(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BSQ's entropy term, factorized per bit: low when each token is confident about its bits,
        lowered further when bits are used evenly across tokens (no dead or constant bits)."""
        logits = 2.0 * u.float() * math.sqrt(self.bits) / self.temperature
        p = torch.sigmoid(logits).transpose(0, 1).reshape(self.bits, -1)  # (d, tokens): P(bit = +1)
        per_token = _binary_entropy(p).mean()
        marginal = p.mean(dim=1)
        codebook = _binary_entropy(marginal).mean()
        return per_token - self.gamma * codebook, marginal.detach()

    def bits_of(self, q: Quantized) -> list[torch.Tensor]:
        """Per stage: (B, d, frames, side, side) bool bits (True = +1)."""
        return [c.detach() > 0 for c in q.codes]

    def codes_from_bits(self, bits: list[torch.Tensor], dtype=torch.float32) -> list[torch.Tensor]:
        return [torch.where(b, self.unit, -self.unit).to(dtype) for b in bits]

    def cumulative(self, codes: list[torch.Tensor], schedule: ScaleSchedule, upto: int | None = None) -> torch.Tensor:
        """The latent (B, d, t, h, w) from the first ``upto`` scales of every segment (all when None):
        what the decoder turns into a coarse-to-fine reconstruction."""
        upto = len(schedule.scales) if upto is None else upto
        parts = []
        per_segment = len(schedule.scales)
        for seg, (_, frames) in enumerate(schedule.segments):
            first = codes[seg * per_segment]
            acc = first.new_zeros(first.shape[0], first.shape[1], frames, schedule.grid, schedule.grid)
            for c in codes[seg * per_segment: seg * per_segment + upto]:
                acc = acc + self.up(c, schedule.grid)
            parts.append(acc)
        return torch.cat(parts, dim=2)

    def next_scale_inputs(self, codes: list[torch.Tensor], schedule: ScaleSchedule) -> list[torch.Tensor | None]:
        """Per stage, what an autoregressive model sees before predicting it (:class:`StageInputs`)."""
        builder = StageInputs(self, schedule)
        inputs = []
        for stage, code in zip(schedule.stages, codes):
            inputs.append(builder.next(stage))
            builder.add(code)
        return inputs


class StageInputs:
    """Builds each stage's input map as the stream is produced, code by code (a teacher-forced pass
    replays a whole stream; sampling adds one stage at a time).

    A stage's input (B, 2d, frames, side, side) stacks, both area-downsampled to the stage's grid:

    - channels ``:d``: the cumulative code of its segment's earlier scales (zeros at a segment's first scale);
    - channels ``d:``: the *full* cumulative code of the previous segment (every scale, the finest
      included), aligned to this segment's frames: its last ``frames`` frames, left-padded with its
      first frame when it has fewer (the first frame before the first clip). Zeros in segment 0.

    So every stage of a clip sees the whole reconstruction of the frames before it, whatever the
    attention mode, and earlier segments through the inputs of the segments between. The image's
    first stage has no input (None: the model puts its start token there).
    """

    def __init__(self, quantizer: MultiScaleBSQ, schedule: ScaleSchedule):
        self.quantizer, self.schedule = quantizer, schedule
        self.acc: torch.Tensor | None = None  # the current segment's cumulative code on the full grid
        self.history: torch.Tensor | None = None  # the previous segment's, aligned to the current segment's frames

    def next(self, stage: Stage) -> torch.Tensor | None:
        """The input of ``stage`` (the next stage of the stream), from the codes added so far."""
        if stage.scale == 0:
            self.history = None if self.acc is None else _align(self.acc, stage.frames)
            self.acc = None
        if self.acc is None and self.history is None:
            return None
        ref = self.acc if self.acc is not None else self.history
        grid = self.schedule.grid
        own = self.acc if self.acc is not None else ref.new_zeros(ref.shape[0], ref.shape[1], stage.frames, grid, grid)
        past = self.history if self.history is not None else torch.zeros_like(own)
        return self.quantizer.down(torch.cat([own, past], dim=1), stage.side)

    def add(self, code: torch.Tensor) -> None:
        """The code of the stage just produced (B, d, frames, side, side)."""
        up = self.quantizer.up(code, self.schedule.grid)
        self.acc = up if self.acc is None else self.acc + up


def _align(previous: torch.Tensor, frames: int) -> torch.Tensor:
    """The last ``frames`` frames of ``previous`` (B, d, t, h, w), left-padded with its first frame."""
    t = previous.shape[2]
    if t >= frames:
        return previous[:, :, t - frames:]
    return torch.cat([previous[:, :, :1].expand(-1, -1, frames - t, -1, -1), previous], dim=2)


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of Bernoulli(p), safe at 0 and 1."""
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))
