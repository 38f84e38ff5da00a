"""Pieces every training recipe shares: paths, seed ranges, config errors, SB3 setup.

``training/train.py`` (per-request policies) and ``training/knobs.py`` (knob policies) both
build vectorised envs and algorithm arguments here, so neither imports the other.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
#: Where the shipped training configs live (`knobs.yaml`, the default recipe, and the others).
CONFIG_DIR = REPO / "training" / "configs"
#: Periodic (model-selection) evaluations use seeds TRAIN_SEED_MAX + VALIDATION_OFFSET + i; the final
#: comparison uses TRAIN_SEED_MAX + i, so the reported figures are never the ones the best model was picked on.
VALIDATION_OFFSET = 1000


class ConfigError(ValueError):
    """A bad flag value or config file; one line that names the problem and the fix."""


_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` flags -> ``{dotted key: value}``. A value is read as YAML, so ``3``,
    ``1e-3``, ``true``, ``null``, ``mean`` and ``[1.0, 2.0]`` mean what they mean in a config."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or ():
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted config key, e.g. --set warm_start.tune.objective=mean")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not YAML ({str(e).splitlines()[0]}); quote it, e.g. --set 'eval.twin=twin:seeds=3'") from None
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 as a string (it wants 1.0e-3); on a command line it is a number
        out[key] = value
    return out


def add_set_flag(parser: Any) -> None:
    """``--set KEY=VALUE`` on a command that reads a training config (parsed by :func:`parse_overrides`)."""
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="change one config value (repeatable; dotted keys, YAML values), e.g. --set "
                        "warm_start.tune.objective=mean --set eval.seeds=20; checked as the config file is")


def get_dotted(cfg: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted key (``warm_start.tune.objective``), or None where the path ends."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def set_dotted(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a dotted key, making the mappings on the way (an empty one where the config has null)."""
    *parents, last = dotted.split(".")
    node = cfg
    for i, part in enumerate(parents):
        if node.get(part) is None:
            node[part] = {}
        elif not isinstance(node[part], dict):
            where = ".".join(parents[: i + 1])
            raise ConfigError(f"--set {dotted}: {where} is {node[part]!r} in the config, not a mapping; set {where} itself")
        node = node[part]
    node[last] = value


def with_overrides(base: Mapping[str, Any], params: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of a config with ``params`` (dotted keys) set; in a config made of blocks
    (``default`` and env ids), in every block, so the override wins whichever block applies."""
    import copy

    out = copy.deepcopy(dict(base))
    blocks = [b for b in out.values() if isinstance(b, dict)] if "default" in out else [out]
    for block in blocks:
        for key, value in (params or {}).items():
            set_dotted(block, key, copy.deepcopy(value))
    return out


def config_source(path: Path, overrides: Mapping[str, Any] | None) -> str:
    """How error messages name a config: its file, and the ``--set`` keys applied to it."""
    return f"config {path}" + (f" (with --set {', '.join(overrides)})" if overrides else "")


def hyperparams(cfg: dict[str, Any], run_keys: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """The algorithm's keyword arguments (activation names become torch classes)."""
    import torch

    out = {k: v for k, v in cfg.items() if k not in run_keys}
    pk = dict(out.get("policy_kwargs") or {})
    act = pk.get("activation_fn")
    if isinstance(act, str):
        acts = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}
        if act.lower() not in acts:
            raise ConfigError(f"policy_kwargs.activation_fn {act!r} is not supported; use one of {sorted(acts)}")
        pk["activation_fn"] = acts[act.lower()]
    if pk:
        out["policy_kwargs"] = pk
    return out


def policy_class(name: str, algo: str) -> Any:
    """``SlotPolicy`` -> the vectorised slot policy for ``algo``; other names go to SB3 unchanged."""
    if name != "SlotPolicy":
        return name
    from policy_env.sb3 import MaskableSlotPolicy, SlotPolicy

    return MaskableSlotPolicy if algo == "maskable_ppo" else SlotPolicy


def make_env_fn(env_id: str, env_kwargs: dict[str, Any]) -> Callable[[], Any]:
    def make() -> Any:
        import gymnasium as gym

        import policy_env  # noqa: F401  (registers specctl/*)

        return gym.make(env_id, **env_kwargs)

    return make


def build_vec_env(env_id: str, env_kwargs: dict[str, Any], n_envs: int, vec_env: str, seed: int) -> Any:
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    cls = SubprocVecEnv if vec_env == "subproc" else DummyVecEnv
    return make_vec_env(make_env_fn(env_id, env_kwargs), n_envs=n_envs, seed=seed, vec_env_cls=cls)


def tqdm_write(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg)


def progress(total: int | None = None, desc: str = "", unit: str = "it", iterable: Any = None, leave: bool = False) -> Any:
    """A tqdm bar with an ETA that also shows in logs: on a terminal it redraws in place; when
    stderr is a file or pipe (CI, nohup, ``| tee``) it writes a line every 30 s instead of
    staying silent for the whole phase."""
    import sys

    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave or not tty, mininterval=0.1 if tty else 30.0,
                ascii=not tty, dynamic_ncols=tty)


def progress_callback(total_timesteps: int, desc: str = "train") -> Any:
    """An SB3 callback that drives :func:`progress` over the timesteps of ``learn()``."""
    from stable_baselines3.common.callbacks import BaseCallback

    class _Progress(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = progress(total=total_timesteps, desc=desc, unit="step")
            self._last = self.num_timesteps

        def _on_step(self) -> bool:
            self.bar.update(self.num_timesteps - self._last)
            self._last = self.num_timesteps
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    return _Progress()
