"""A learned selector: probe the system under one knob setting, then hold the setting a model
trained on other systems predicts will do best here.

One fixed setting for every system loses where another heuristic fits (README "Knob policy
results"); the lookahead planner finds the fitting one by simulating, which needs a simulator
of the system. The selector needs none: for ``probe_s`` it runs the first setting and records
the site-agnostic knob features of each 1-s window (:data:`~controllers.knobs.KNOB_FEATURES`,
less the knobs' own levels); then a random forest, fitted by ``python -m training.selector`` on
training systems of a distribution, predicts each setting's share of the system's best goodput
from their mean, and the selector holds the setting predicted best, if it
beats the first by more than ``margin``. It deploys wherever its modes run, the real runtime
included, since it reads only what the knob controller observes.

The model file (JSON) holds the modes, the settings, the features used and the trees;
:func:`load_selector` checks it and names what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime.contract import Decision, DecisionPoint, RuntimeInfo

from controllers.knobs import KNOB_FEATURES, KnobController, checked_settings, knob_setting

SELECTOR_VERSION = 1
#: Features the model reads: every knob feature except the knobs' own levels (constant while probing).
SELECTOR_FEATURES: tuple[str, ...] = tuple(f for f in KNOB_FEATURES if f not in ("cap", "k_cap", "hedge"))
_INDEX = [KNOB_FEATURES.index(f) for f in SELECTOR_FEATURES]
#: The probe's length and the start of its averaging (s), unless a model says otherwise.
PROBE_S, WARMUP_S = 10.0, 2.0


@dataclass
class SelectorModel:
    """What ``training.selector`` fits: a random forest predicting every setting's share of a
    system's best from the probe features. Each tree is its sklearn arrays (``left``/``right``
    children, -1 at a leaf; ``feature`` and ``threshold`` of each split; ``value``, a leaf's
    predicted shares, empty at a split), so deploying it needs numpy only, not sklearn or pickle."""

    modes: list[str]
    settings: list[dict[str, Any]]
    trees: list[dict[str, list]]
    probe_s: float = PROBE_S
    warmup_s: float = WARMUP_S
    margin: float = 0.0
    features: tuple[str, ...] = SELECTOR_FEATURES
    version: int = SELECTOR_VERSION

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted share of the best for every setting (the trees' mean), from probe features ``x``."""
        x = np.asarray(x, dtype=float)
        total = np.zeros(len(self.settings))
        for t in self.trees:
            left, right, feature, threshold = t["left"], t["right"], t["feature"], t["threshold"]
            node = 0
            while left[node] != -1:
                node = left[node] if x[feature[node]] <= threshold[node] else right[node]
            total += t["value"][node]
        return total / max(len(self.trees), 1)

    def choose(self, x: np.ndarray) -> int:
        """The setting to hold: the predicted best, unless it beats the first by ``margin`` or less."""
        pred = self.predict(x)
        best = int(np.argmax(pred))
        return best if pred[best] - pred[0] > self.margin else 0

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        d = asdict(self)
        d["features"] = list(self.features)
        Path(path).write_text(json.dumps(d, separators=(",", ":")))


def load_selector(path: str | Path) -> SelectorModel:
    """Read a model written by ``python -m training.selector`` (a file, or an MLflow ref such as
    ``runs:/<run_id>/selector/selector.json``, where ``training/train.py`` logs the run's); a
    clear error names the problem."""
    if str(path).startswith(("runs:/", "models:/")):
        from training.tracking import download_ref

        path = download_ref(str(path))
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"selector model {str(p)!r} not found; fit one with `python -m training.selector --out {p}`")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not a selector model (not JSON: {e})") from None
    if not isinstance(d, dict) or d.get("version") != SELECTOR_VERSION:
        got = d.get("version") if isinstance(d, dict) else None
        raise ValueError(f"{p}: selector model version {got!r}, this specctl reads version {SELECTOR_VERSION}; refit it "
                         "with `python -m training.selector`")
    if tuple(d.get("features", ())) != SELECTOR_FEATURES:
        raise ValueError(f"{p} was fitted on other features than this specctl observes; refit it with `python -m training.selector`")
    try:
        m = SelectorModel(**{**d, "features": tuple(d["features"])})
    except TypeError as e:
        raise ValueError(f"{p}: {e}; refit it with `python -m training.selector`") from None
    m.settings = checked_settings(m.settings, len(m.modes), str(p))
    n, f = len(m.settings), len(m.features)
    for i, t in enumerate(m.trees):
        nodes = len(t.get("left", ()))
        ok = (nodes > 0 and all(len(t.get(k, ())) == nodes for k in ("right", "feature", "threshold", "value"))
              and all(c == -1 or i < c < nodes for side in (t["left"], t["right"]) for i, c in enumerate(side))
              and all(0 <= j < f for j in t["feature"])
              and all(len(v) == n for v, c in zip(t["value"], t["left"]) if c == -1))
        if not ok:
            raise ValueError(f"{p}: tree {i} is not {n} settings' shares over {f} features (left, right, feature, "
                             "threshold and value per node); refit it with `python -m training.selector`")
    if not m.trees:
        raise ValueError(f"{p}: a selector needs trees; refit it with `python -m training.selector`")
    if not 0 < m.warmup_s < m.probe_s:
        raise ValueError(f"{p}: need 0 < warmup_s < probe_s, got {m.warmup_s} and {m.probe_s}")
    return m


class Selector(KnobController):
    """Runs the model's first setting for ``probe_s``, then holds the setting it chooses.

    ``model``: a model file (``python -m training.selector --out FILE``) or a
    :class:`SelectorModel`. Without one it probes and then holds setting ``hold`` (default: the
    first, i.e. never switches): how the training data are recorded, each setting's label being
    the run a deployed selector choosing it would have, and its features computed by the same code.
    """

    name = "selector"

    def __init__(self, model: str | Path | SelectorModel | None = None, margin: float | None = None,
                 settings: Sequence[dict[str, Any]] | None = None, modes: Sequence[str] | None = None,
                 probe_s: float | None = None, warmup_s: float | None = None, hold: int | None = None) -> None:
        self.model = load_selector(model) if isinstance(model, (str, Path)) else model
        if self.model is not None:
            given = [k for k, v in (("settings", settings), ("modes", modes), ("probe_s", probe_s), ("warmup_s", warmup_s),
                                    ("hold", hold)) if v is not None]
            if given:  # the model was fitted on features of its own probe and settings
                raise ValueError(f"{', '.join(given)} come(s) from the model; refit it with `python -m training.selector` "
                                 "to change them")
            settings, modes = self.model.settings, self.model.modes
            probe_s, warmup_s = self.model.probe_s, self.model.warmup_s
            if margin is not None:
                self.model = replace(self.model, margin=float(margin))
        probe_s = PROBE_S if probe_s is None else probe_s
        warmup_s = WARMUP_S if warmup_s is None else warmup_s
        if not settings or not modes:
            raise ValueError("a selector needs a model file, or settings and modes to probe with")
        super().__init__(modes=modes)
        self.settings = [knob_setting(s) for s in checked_settings(settings, len(modes), "knob settings")]
        self.probe_s, self.warmup_s = float(probe_s), float(warmup_s)
        if hold is not None and not 0 <= hold < len(self.settings):
            raise ValueError(f"hold={hold}: there are {len(self.settings)} settings (0..{len(self.settings) - 1})")
        self.hold = hold
        self.samples: list[np.ndarray] = []  # each probe window's features
        self.probing = True
        self.chosen: int | None = None  # the setting held after the probe

    def bind(self, info: RuntimeInfo) -> None:
        super().bind(info)
        self.usage = {}  # (binding set the default knobs; the probe's setting is the first real one)
        self.samples, self.probing, self.chosen = [], True, None
        self.set_knobs(self.action_for(self.settings[0]), 0.0)

    def probe_features(self) -> np.ndarray:
        """The mean of the probe's per-window features (what the model reads)."""
        if not self.samples:
            return np.zeros(len(SELECTOR_FEATURES))
        return np.mean(self.samples, axis=0)

    def decide(self, point: DecisionPoint) -> Decision:
        self.see(point)
        if self.due(point.time):
            if self.probing and point.time > self.warmup_s:
                self.samples.append(self.observation(point.system)[_INDEX].astype(float))
            if self.probing and point.time >= self.probe_s:
                self.probing = False
                chosen = self.pick(point)
                if chosen is not None:
                    self.chosen = chosen
                    self.set_knobs(self.action_for(self.settings[chosen]), point.time)
                    return self.answer(point)
            self.set_knobs(self.knobs.as_action(), point.time)  # the same setting, a new window
        return self.answer(point)

    def pick(self, point: DecisionPoint) -> int | None:
        """The setting to hold once the probe ends (None: the probe's, without a switch)."""
        if self.model is not None:
            return self.model.choose(self.probe_features())
        return self.hold or None
