"""Finding a recorded run: the one meaning of a run reference that `usam sample`, `audit`, `replicate` and
`kit` share, so the run a user just trained is the run every command picks."""

from __future__ import annotations

from usam.errors import UsamError, first_line


def find_run(client, ref: str, where: str, task: str | None = None):
    """The run ``ref`` of the store behind ``client``, in any experiment: an MLflow run id, a run name (the
    newest run of that name), or ``latest``: the newest FINISHED training run (tagged ``usam.task`` and
    ``checkpoint.sha256``), of ``task`` when given. An id or a name is returned whatever kind of run it is
    (the audit checks any run); callers that need a training run check the tags. ``where`` (the store)
    goes into the errors: an unknown run, or a store that cannot be read."""
    try:
        runs = _search(client, ref, task)
    except Exception as exc:
        raise UsamError(f"cannot read the MLflow tracking store: {first_line(exc)}", where=where,
                        fix="check tracking.uri (and that the server is up)") from None
    if not runs:
        raise UsamError(
            f"no {task + ' ' if task else ''}run {ref!r} in the tracking store",
            where=where,
            fix="pass a run id or name from `usam ui` (or `latest`); for a run recorded in another store, "
            "point at it, e.g. `usam audit RUN tracking.uri=sqlite:////path/to/mlflow.db`",
        )
    return runs[0]


def _search(client, ref: str, task: str | None) -> list:
    from mlflow.exceptions import MlflowException

    ids = [e.experiment_id for e in client.search_experiments()]
    if ref == "latest":
        kind = f"= '{task}'" if task else "!= ''"
        query = f"tags.`usam.task` {kind} and tags.`checkpoint.sha256` != '' and attributes.status = 'FINISHED'"
    else:
        try:
            return [client.get_run(ref)]
        except MlflowException:
            query = "attributes.run_name = '{}'".format(ref.replace("'", "\\'"))
    return client.search_runs(ids, query, order_by=["attributes.start_time DESC"], max_results=1) if ids else []
