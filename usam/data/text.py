"""Captions as word ids: the text vocabulary USAM is conditioned on, built from the training captions."""

from __future__ import annotations

import re

import torch

UNKNOWN_WORD = 1  # word id 0 pads, 1 stands for any word not seen in the training captions
TEXT_LEN = 16


def words(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", caption.lower())


def build_vocabulary(captions: list[str]) -> dict[str, int]:
    """Word -> id from the training captions (ids from 2: 0 pads, 1 is an unknown word)."""
    return {w: i + 2 for i, w in enumerate(sorted({w for c in captions for w in words(c)}))}


def encode_text(caption: str, vocab: dict[str, int], length: int = TEXT_LEN) -> torch.Tensor:
    """Word ids, padded or cut to ``length``; unknown words map to ``UNKNOWN_WORD`` (handled, never an error)."""
    ids = [vocab.get(w, UNKNOWN_WORD) for w in words(caption)][:length]
    return torch.tensor(ids + [0] * (length - len(ids)), dtype=torch.long)
