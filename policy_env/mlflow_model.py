"""The MLflow pyfunc model of a trained policy (models-from-code: MLflow stores this file, no pickle).

``mlflow.pyfunc.load_model("models:/<name>@<alias>").predict(observations)`` returns the
deterministic actions of the policy for a batch of encoded observations (rows of
``Codec.obs_size`` floats). Action masks, when the policy uses them, go in a second input
column block: pass a dict ``{"obs": obs, "mask": mask}``. For serving in the runtime use
``--controller policy:models:/<name>@<alias>`` instead, which runs the whole decode path.
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

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
        if isinstance(model_input, dict):
            obs, mask = np.asarray(model_input["obs"], dtype=np.float32), model_input.get("mask")
        else:
            obs, mask = np.asarray(model_input, dtype=np.float32), None
        obs = np.atleast_2d(obs)
        masks = [None] * len(obs) if mask is None else np.atleast_2d(np.asarray(mask, dtype=bool))
        return np.stack([self.net(o, m) for o, m in zip(obs, masks)])


mlflow.models.set_model(PolicyModel())
