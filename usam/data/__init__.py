"""Datasets: synthetic generators, the user's video folder, the build/preprocess stages, the torch Dataset and
the text vocabulary of the captions.

May import: errors, paths, seeding, files, config.
"""

from usam.data.augment import augment_clip
from usam.data.build import build_dataset, dataset_hashes, verify_dataset
from usam.data.dataset import VideoDataset, denormalize
from usam.data.preprocess import preprocess_dataset
from usam.data.synthetic import generate_bouncing_shapes, generate_moving_digits, generate_split
from usam.data.video_folder import load_video_folder
from usam.data.videoset import SPLITS, VideoSet

__all__ = [
    "SPLITS",
    "VideoDataset",
    "VideoSet",
    "augment_clip",
    "build_dataset",
    "dataset_hashes",
    "denormalize",
    "generate_bouncing_shapes",
    "generate_moving_digits",
    "generate_split",
    "load_video_folder",
    "preprocess_dataset",
    "verify_dataset",
]
