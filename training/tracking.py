"""MLflow tracking setup shared by training and evaluation.

MLflow 3 no longer accepts a bare ``./mlruns`` file store, so the default store is a SQLite
database beside the repository's ``mlruns/`` folder, which holds the artifacts::

    from training.tracking import setup_tracking
    experiment_id = setup_tracking(args.tracking_uri, "specctl-evaluate")
    with mlflow.start_run(experiment_id=experiment_id): ...

Precedence: the explicit ``uri`` (a ``--tracking-uri`` flag), then ``MLFLOW_TRACKING_URI``,
then ``sqlite:///<repo>/mlflow.db``. For a SQLite store the experiment's artifacts go to an
``mlruns/`` folder beside the database file; other stores (an MLflow server) choose their own.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URI = f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: ``uri``, else ``MLFLOW_TRACKING_URI``, else the repo's SQLite file."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def download_ref(ref: str) -> Path:
    """The local copy of an MLflow artifact ref (``runs:/<run_id>/<path>`` or
    ``models:/<name>@<alias>``) from the resolved store; ValueError with one line naming the store."""
    import mlflow

    mlflow.set_tracking_uri(resolve_tracking_uri())
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=ref))
    except Exception as e:  # MLflow raises many types for a bad ref
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot fetch {ref!r} from MLflow at {mlflow.get_tracking_uri()}: {first} "
                         f"(check the run id / model name and alias, or set MLFLOW_TRACKING_URI)") from None


def artifact_root(uri: str) -> Path | None:
    """Where a SQLite store keeps artifacts: the ``mlruns/`` folder beside the database file."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns"


def setup_tracking(uri: str | None, experiment: str) -> str:
    """Point MLflow at the resolved store, create ``experiment`` if needed; returns its id.

    Raises ``ValueError`` with one line when the store cannot be used (a bad URI, a directory
    that cannot be created), naming the URI and how to choose another.
    """
    import mlflow

    resolved = resolve_tracking_uri(uri)
    if resolved.startswith("file:") or "://" not in resolved:
        raise ValueError(
            f"tracking URI {resolved!r} is a plain file store, which MLflow 3 no longer supports; "
            f"use a database URI such as {DEFAULT_URI!r} (--tracking-uri or MLFLOW_TRACKING_URI)"
        )
    root = artifact_root(resolved)
    try:
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(resolved)
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        location = (root / experiment).as_uri() if root is not None else None
        return mlflow.create_experiment(experiment, artifact_location=location)
    except Exception as e:  # mlflow raises many types for a bad store; report one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"cannot use MLflow tracking store {resolved!r}: {first} (pass another --tracking-uri)"
        ) from None
