"""Read one user video (mp4/webm/... via PyAV, gif via Pillow, or a folder of PNG frames) into fixed-size frames.

Frames are resized and cropped as they are decoded, so long videos never sit in memory at full size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from usam.data.imageops import resize_shorter_center_crop

VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v"}
FRAME_SUFFIXES = {".png"}


class DecodeError(Exception):
    """The file cannot be turned into a clip (unreadable, corrupt, too short, unknown kind)."""


def _frames_av(path: Path):
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DecodeError("has no video stream")
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


def _frames_gif(path: Path):
    with Image.open(path) as img:
        for frame in ImageSequence.Iterator(img):
            yield np.asarray(frame.convert("RGB"))


def _frames_dir(path: Path):
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise DecodeError("is a folder without PNG frames")
    for f in files:
        with Image.open(f) as img:
            yield np.asarray(img.convert("RGB"))


def _reader(path: Path):
    if path.is_dir():
        return _frames_dir(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return _frames_gif(path)
    if suffix in VIDEO_SUFFIXES:
        return _frames_av(path)
    raise DecodeError(f"has unsupported type {suffix or '(none)'!r} (use mp4/webm/gif or a folder of PNG frames)")


def read_clip(path: Path, frames: int, size: int) -> tuple[np.ndarray, dict]:
    """uint8 (frames, size, size, 3): ``frames`` frames evenly spaced over the whole video.

    Raises :class:`DecodeError` for an unreadable file or one with fewer than ``frames`` frames.
    """
    if not path.exists():
        raise DecodeError("does not exist")
    decoded = []
    try:
        for frame in _reader(path):
            decoded.append(resize_shorter_center_crop(np.ascontiguousarray(frame), size, size))
    except DecodeError:
        raise
    except Exception as exc:  # any decoder failure means the same to the user: this file is unreadable
        raise DecodeError(f"cannot be decoded ({type(exc).__name__})") from exc
    if len(decoded) < frames:
        raise DecodeError(f"has {len(decoded)} frames, fewer than data.frames = {frames}")
    idx = np.linspace(0, len(decoded) - 1, frames).round().astype(int)
    return np.stack([decoded[i] for i in idx]), {"source_frames": len(decoded), "frame_indices": idx.tolist()}
