"""The MLflow pyfunc model of a trained policy (models-from-code: MLflow stores this file, no pickle).

``mlflow.pyfunc.load_model("models:/<name>@<alias>").predict(observations)`` returns the
deterministic actions of the policy for a batch of encoded observations (rows of
``Codec.obs_size`` floats, the logged signature), without action masks: the signature has no
place for them, and MLflow refuses inputs outside it. For serving use ``--controller
policy:models:/<name>@<alias>``, which runs the whole decode path, masks included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np


class PolicyModel(mlflow.pyfunc.PythonModel):
    """Wraps :class:`controllers.policy.PolicyNet` loaded from the logged policy directory."""

    def load_context(self, context: Any) -> None:
        from controllers.policy import load_policy_dir

        self.spec, self.net = load_policy_dir(Path(context.artifacts["policy"]))

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        # (an ndarray hint is one MLflow infers no schema from: the logged signature stays the one
        # schema, and MLflow does not warn that the hints are missing)
        obs = np.atleast_2d(np.asarray(model_input, dtype=np.float32))
        return np.stack([self.net(o, None) for o in obs])


mlflow.models.set_model(PolicyModel())
