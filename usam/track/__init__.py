"""Tracking: the MLflow run context every run type opens, and the provenance it records (config, seeds,
environment, git, data hashes).

May import: errors, paths, seeding, files, config, data, models, artifacts, media.
"""

from usam.track.run import TrackedRun, artifact_root, client_for, resumable_run, tracked_run, tracking_uri

__all__ = ["TrackedRun", "artifact_root", "client_for", "resumable_run", "tracked_run", "tracking_uri"]
