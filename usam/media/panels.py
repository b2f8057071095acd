"""Pictures people would rather look at than read: frame strips (PNG) and side-by-side GIFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) in [0, 1] -> (T, H, W, 3) uint8."""
    return (frames.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def _upscale(a: np.ndarray, zoom: int) -> np.ndarray:
    return a.repeat(zoom, axis=-3).repeat(zoom, axis=-2) if zoom > 1 else a


def strip_grid(rows: list[torch.Tensor], zoom: int = 2, gap: int = 2) -> np.ndarray:
    """One image: each row a video (T, 3, H, W) in [0, 1], its frames left to right."""
    arrays = [_upscale(_to_uint8(r), zoom) for r in rows]
    t, h, w = max(a.shape[0] for a in arrays), arrays[0].shape[1], arrays[0].shape[2]
    out = np.full((len(arrays) * (h + gap) - gap, t * (w + gap) - gap, 3), 255, np.uint8)
    for i, a in enumerate(arrays):
        for j in range(a.shape[0]):
            out[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = a[j]
    return out


def side_by_side_frames(columns: list[list[torch.Tensor]], zoom: int = 2, gap: int = 2) -> list[np.ndarray]:
    """GIF frames: ``columns[c][r]`` is video r of column c (e.g. input, reconstruction); time runs through the GIF."""
    arrays = [[_upscale(_to_uint8(v), zoom) for v in col] for col in columns]
    t, h, w = arrays[0][0].shape[:3]
    rows, cols = len(arrays[0]), len(arrays)
    frames = []
    for k in range(t):
        canvas = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
        for c in range(cols):
            for r in range(rows):
                canvas[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = arrays[c][r][min(k, len(arrays[c][r]) - 1)]
        frames.append(canvas)
    return frames


def save_png(image: np.ndarray, path: Path) -> Path:
    Image.fromarray(image).save(path)
    return Path(path)


def save_gif(frames: list[np.ndarray], path: Path, fps: float = 4.0) -> Path:
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return Path(path)


def save_mp4(frames: list[np.ndarray], path: Path, fps: float = 4.0) -> Path:
    """H.264 when the bundled FFmpeg has it, else MPEG-4 Part 2; sides padded to even for yuv420p."""
    import av

    h, w = frames[0].shape[:2]
    ph, pw = h + h % 2, w + w % 2
    with av.open(str(path), mode="w") as container:
        codecs = [c for c in ("libx264", "mpeg4") if c in av.codecs_available]
        stream = container.add_stream(codecs[0], rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        for f in frames:
            padded = np.zeros((ph, pw, 3), np.uint8)
            padded[:h, :w] = f
            for packet in stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def write_grid(videos: torch.Tensor, folder: Path, stem: str, mp4: bool = False) -> list[Path]:
    """Videos (B, 3, T, H, W) in [0, 1] as a PNG of frame strips, and a GIF (and MP4) grid with
    ``per_row`` videos side by side."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = [v.transpose(0, 1) for v in videos]
    per_row = min(4, len(frames))
    columns = [frames[i::per_row] for i in range(per_row)]
    columns = [c + [torch.zeros_like(frames[0])] * (len(columns[0]) - len(c)) for c in columns]
    animation = side_by_side_frames(columns)
    files = [save_png(strip_grid(frames), folder / f"{stem}.png"), save_gif(animation, folder / f"{stem}.gif")]
    if mp4:
        files.append(save_mp4(animation, folder / f"{stem}.mp4"))
    return files
