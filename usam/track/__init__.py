"""Tracking core: the MLflow run context and the provenance it records."""

from usam.track.run import TrackedRun, artifact_root, client_for, tracked_run, tracking_uri

__all__ = ["TrackedRun", "artifact_root", "client_for", "tracked_run", "tracking_uri"]
