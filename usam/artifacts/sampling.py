"""Generate videos with a trained USAM model: conditions by name, guidance, seeds, context frames.

``rebuild_usam`` is the one way a trained USAM is rebuilt from an exported ``weights.pt``, for
``Sampler.load`` (which adds its tokenizer, both checked by sha256) and the evaluation's generators;
``generate_videos`` is the one path from bits to pixels, shared by the training task's sample grids,
the DVC stages and ``usam sample``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from usam.artifacts.loaders import load_evaluator, load_tokenizer
from usam.artifacts.weights import load_weights
from usam.config.schema import SamplingConfig
from usam.data.dataset import stats_tensors
from usam.data.text import UNKNOWN_WORD, encode_text, words
from usam.errors import UsamError
from usam.models.usam import USAM, USAMConfig


@torch.no_grad()
def generate_videos(model: USAM, tokenizer, normalize: dict, frames: int, cond: dict, batch: int,
                    sampling: SamplingConfig, generator: torch.Generator | None = None,
                    forced: list | None = None, modulation: str = "per_token", precision: str = "fp32") -> torch.Tensor:
    """Sampled videos (B, 3, T, H, W) with pixel values in [0, 1]. ``modulation`` / ``precision``: the sampler's
    speed switches (:meth:`USAM.generate`); the defaults are what the pipeline samples with."""
    was_training = model.training
    model.eval()
    bits = model.generate(tokenizer.quantizer, cond, batch, cfg=sampling.cfg, cfg_ramp=sampling.cfg_ramp,
                          temperature=list(sampling.temperature), top_k=sampling.top_k, top_p=sampling.top_p,
                          generator=generator, forced=forced, modulation=modulation, precision=precision)
    model.train(was_training)
    video = tokenizer.decode(bits, model.schedule, frames).float()
    mean, std = stats_tensors(normalize, (1, -1, 1, 1, 1), video.device)
    return (video * std + mean).clamp(0, 1)


def rebuild_usam(state: dict) -> USAM:
    """The trained USAM of a loaded weights file, built from the kwargs stored with it rather than from today's
    config, so a run samples the same wherever it is loaded."""
    model = USAM(USAMConfig(**state["model_kwargs"]))
    model.load_state_dict(state["model"])
    return model.eval()


@dataclass
class Sampler:
    model: USAM
    tokenizer: torch.nn.Module
    meta: dict  # what the usam task stored with the weights

    @classmethod
    def load(cls, weights: Path, sha256: str | None, root: Path) -> "Sampler":
        state = load_weights(weights, sha256)
        if state.get("task") != "usam":
            raise UsamError(f"{Path(weights).name} holds a {state.get('task')!r} model, not USAM", where=str(weights),
                            fix="pass a run of `usam train usam` (or the `usam` stage)")
        tok = state["tokenizer"]
        tokenizer, tok_meta = load_tokenizer(root / tok["path"], tok["sha256"])
        return cls(rebuild_usam(state), tokenizer, {**state, "frames": tok_meta["frames"]})

    def _index(self, kind: str, names: list[str] | None, value: str) -> int:
        if not names:
            raise UsamError(f"this model was not trained with {kind} conditioning", where=f"--{kind} {value}",
                            fix=f"drop --{kind}, or train with model.conditioning.{'class_label' if kind == 'class' else kind}=true")
        if value not in names:
            raise UsamError(f"unknown {kind} {value!r}", where=f"--{kind} {value}", fix=f"use one of: {', '.join(names)}")
        return names.index(value)

    def conditions(self, num: int, *, klass: str | None = None, action: str | None = None, text: str | None = None,
                   context: torch.Tensor | None = None) -> tuple[dict, list | None, list[str]]:
        """(cond, forced bits, notes) for ``num`` videos; a missing condition is the null (unconditional) one.
        ``context``: one normalized video (3, T, H, W) whose first frame is given."""
        notes: list[str] = []
        cond = self.model.null_condition(num, torch.device("cpu"))
        if klass is not None:
            cond["class"] = torch.full((num,), self._index("class", self.meta.get("class_names"), klass))
        if action is not None:
            cond["action"] = torch.full((num,), self._index("action", self.meta.get("action_names"), action))
        if text is not None:
            vocab = self.meta.get("vocabulary")
            if not vocab:
                raise UsamError("this model was not trained with text conditioning", where=f"--text {text!r}",
                                fix="drop --text, or train with model.conditioning.text=true")
            ids = encode_text(text, vocab)
            unknown = [w for w in words(text) if vocab.get(w, UNKNOWN_WORD) == UNKNOWN_WORD]
            if unknown:
                notes.append(f"words not in the training captions (read as 'unknown'): {', '.join(unknown)}")
            cond["text"] = ids.expand(num, -1).clone()
        forced = None
        if context is not None:
            if self.model.context_memory is None:
                raise UsamError("this model was not trained with context frames", where="--context",
                                fix="drop --context, or train with model.conditioning.context_frames=true")
            latent = self.tokenizer.encoder(context[None]).float()
            cond["context"] = latent[:, :, :1].expand(num, -1, -1, -1, -1).clone()
            bits, _ = self.tokenizer.encode(context[None])
            image_stages = len(self.model.schedule.scales)
            forced = [b.expand(num, *b.shape[1:]).clone() if i < image_stages else None for i, b in enumerate(bits)]
        return cond, forced, notes

    def sample(self, cond: dict, num: int, sampling: SamplingConfig, seed: int, forced=None, *,
               modulation: str = "per_token", precision: str = "fp32") -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return generate_videos(self.model, self.tokenizer, self.meta["normalize"], self.meta["frames"], cond, num,
                               sampling, generator, forced, modulation, precision)


@torch.no_grad()
def classify_frames(videos: torch.Tensor, weights: Path, sha256: str | None, normalize: dict) -> torch.Tensor:
    """The frame evaluator's class per video (B, 3, T, H, W in [0, 1]): the argmax of its frame logits' mean."""
    net, _ = load_evaluator("frame", weights, sha256)
    b, c, t, h, w = videos.shape
    mean, std = stats_tensors(normalize, (1, -1, 1, 1))
    frames = (videos.transpose(1, 2).reshape(b * t, c, h, w) - mean) / std
    return net(frames).view(b, t, -1).mean(1).argmax(-1)
