"""MLflow glue for stable-baselines3: tracking setup, a logger output format, the policy as a model.

* :func:`setup_tracking` - the shared ``training.tracking`` setup (embedded by default:
  ``sqlite:///<repo>/mlflow.db``, artifacts under ``<repo>/mlruns``; ``MLFLOW_TRACKING_URI`` or
  an explicit URI wins), then selects the experiment.
* :class:`MLflowOutputFormat` - an SB3 ``KVWriter``: every ``logger.dump()`` (train/loss,
  rollout/ep_rew_mean, time/fps, ...) becomes MLflow metrics at that timestep.
* :func:`log_policy_model` - logs an exported policy directory as an MLflow pyfunc model
  (models-from-code, no pickle) that can be registered and fetched as ``models:/<name>@<alias>``.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import KVWriter

PYFUNC_MODEL_CODE = Path(__file__).resolve().parents[1] / "policy_env" / "mlflow_model.py"


def setup_tracking(uri: str | None, experiment: str) -> str:
    """Point MLflow at ``uri`` (else ``MLFLOW_TRACKING_URI``, else the embedded store) and make
    ``experiment`` the active one (the shared ``training.tracking`` helper creates it, with
    artifacts under ``mlruns/`` for a sqlite store). Returns the tracking URI in use."""
    import logging

    import mlflow

    from training.tracking import resolve_tracking_uri
    from training.tracking import setup_tracking as shared

    for name in ("alembic", "mlflow.store.db.utils", "mlflow.pyfunc"):  # quiet: db migrations, model validation
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    shared(uri, experiment)
    mlflow.set_experiment(experiment)
    return resolve_tracking_uri(uri)


class MLflowOutputFormat(KVWriter):
    """SB3 logger output that sends every numeric key/value to the active MLflow run."""

    def __init__(self, client: Any | None = None, run_id: str | None = None) -> None:
        import mlflow

        self.client = client or mlflow.MlflowClient()
        active = mlflow.active_run()
        self.run_id = run_id or (active.info.run_id if active else None)
        if self.run_id is None:
            raise RuntimeError("MLflowOutputFormat needs an active MLflow run (mlflow.start_run()) or a run_id")

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...] | None], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for key, value in key_values.items():
            excluded = key_excluded.get(key) or ()
            if "mlflow" in excluded or isinstance(value, (str, bool)) or not hasattr(value, "__float__"):
                continue
            v = float(value)
            if math.isfinite(v):
                metrics.append(Metric(key, v, now, int(step)))
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        pass


def log_params_flat(config: dict[str, Any], prefix: str = "") -> None:
    """Log a nested config as MLflow params (``a.b.c``), values stringified (MLflow's limit: 6000 chars)."""
    import mlflow

    flat: dict[str, str] = {}

    def walk(d: Any, key: str) -> None:
        if isinstance(d, dict) and d:
            for k, v in d.items():
                walk(v, f"{key}.{k}" if key else str(k))
        else:
            flat[key] = str(d)[:6000]

    walk(config, prefix)
    items = list(flat.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i : i + 100]))


def log_policy_model(policy_dir: Path, name: str = "policy", register_as: str | None = None, alias: str = "champion") -> str:
    """Log ``policy_dir`` as a pyfunc model (no pickle: the model's code is ``policy_env/mlflow_model.py``).

    With ``register_as`` the model is registered and ``alias`` points at the new version, so it
    loads as ``models:/<register_as>@<alias>``. Returns the model URI.
    """
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    from controllers.policy import load_policy_dir

    spec, net = load_policy_dir(Path(policy_dir))
    example = np.zeros((1, spec["net"]["obs_size"]), dtype=np.float32)
    signature = infer_signature(example, np.zeros((1, len(net.dims)), dtype=np.int64))
    with warnings.catch_warnings():  # MLflow warns about optional extras (type hints, env capture)
        warnings.simplefilter("ignore")
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(PYFUNC_MODEL_CODE),
            artifacts={"policy": str(policy_dir)},
            signature=signature,
            input_example=example,
            registered_model_name=register_as,
            pip_requirements=["numpy", "safetensors", "mlflow"],
        )
    if register_as:
        client = mlflow.MlflowClient()
        version = info.registered_model_version
        client.set_registered_model_alias(register_as, alias, str(version))
        return f"models:/{register_as}@{alias}"
    return info.model_uri

