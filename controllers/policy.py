"""Deploy a trained policy into the controller slot, without pickle.

A policy directory holds ``policy.json`` (the codec, the heuristic base, the env it was trained
on and the network layout), ``codec.json`` (the codec alone, for humans and tools) and
``policy.safetensors`` (the actor's weights). :class:`PolicyController` loads it from a local
path, ``runs:/<run_id>/<artifact_path>`` or ``models:/<name>@<alias>`` (MLflow), checks the
codec against the runtime's scenario when bound, and answers through the same
:class:`~policy_env.control.ActionController` decode path the env trained it with::

    python -m runtime simulate --controller policy:models:/specctl-policy@champion
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from policy_env.codec import block_period
from runtime.contract import BatchResult, Controller, DecisionPoint, Redundancy, RequestView, RuntimeInfo, SystemView

POLICY_FORMAT = "specctl-policy"
POLICY_FORMAT_VERSION = 1
#: the format a committee policy is written in (``net.committee``): an older loader refuses it
#: rather than deploy its fallback network alone
COMMITTEE_FORMAT_VERSION = 2


class PolicyLoadError(ValueError):
    """A policy reference or directory is unusable; the message says what to do."""


class PolicyNet:
    """The actor's deterministic forward pass in numpy: MLP -> logits -> (masked) argmax per dim.

    Mirrors stable-baselines3's ``ActorCriticPolicy`` with a flatten extractor: the policy
    branch of the MLP extractor, then the action net; MaskablePPO's deterministic action is the
    argmax of the logits with invalid choices masked out.
    """

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], activation: str, dims: Sequence[int], masked: bool) -> None:
        if activation not in _ACTIVATIONS:
            raise PolicyLoadError(f"unsupported activation {activation!r}; supported: {sorted(_ACTIVATIONS)}")
        self.layers = [(np.ascontiguousarray(w.T, dtype=np.float32), b.astype(np.float32)) for w, b in layers]
        self.act = _ACTIVATIONS[activation]
        self.dims = np.asarray(dims, dtype=np.int64)
        self.masked = masked
        # the codec tiles one per-slot block of dimensions: argmax over a (slots, block) view
        self._period = block_period(self.dims)
        self._width = int(self.dims[: self._period].sum())
        self._cuts = np.concatenate([[0], np.cumsum(self.dims[: self._period])]).tolist()

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], n_layers: int, activation: str, dims: Sequence[int], masked: bool,
                     prefix: str = "", source: str = "the weights") -> "PolicyNet":
        """The net whose layers are ``<prefix>layer<i>.weight`` / ``.bias`` in ``tensors`` (as
        :func:`actor_tensors` names them)."""
        try:
            layers = [(tensors[f"{prefix}layer{i}.weight"], tensors[f"{prefix}layer{i}.bias"]) for i in range(n_layers)]
        except KeyError as e:
            raise PolicyLoadError(f"{source} lacks tensor {e}; re-export the policy") from None
        return cls(layers, activation, dims, masked)

    def logits(self, obs: np.ndarray) -> np.ndarray:
        h = obs.astype(np.float32, copy=False)
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < last:
                h = self.act(h)
        return h

    def __call__(self, obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Deterministic actions for one observation (1-D) or a batch of them (2-D)."""
        logits = self.logits(obs)
        if self.masked and mask is not None:
            logits = np.where(mask, logits, -np.inf)
        block = logits.reshape(-1, self._width)
        cuts = self._cuts
        out = np.empty((block.shape[0], self._period), dtype=np.int64)
        for d in range(self._period):
            out[:, d] = block[:, cuts[d] : cuts[d + 1]].argmax(1)
        return out.reshape(logits.shape[:-1] + (-1,))


class CommitteeNet:
    """Bagged members over a fallback network: the action (every knob together) that at least
    ``agree`` of the members choose, else the fallback's (the warm start's fixed setting).

    Each member is fitted to a bootstrap resample of the labelled training systems, so the policy
    leaves the fixed setting only where the labels say so whichever systems were drawn, not where
    one or two systems' labels pull an extrapolating network. The vote is over whole actions, not
    knob by knob: knobs interact (hedging pays only with a higher admission cap), and a per-knob
    vote can assemble a setting no member chose (docs/knob-results-history.md, "Committees").
    """

    def __init__(self, members: Sequence[PolicyNet], fallback: PolicyNet, agree: float) -> None:
        if not members or not 0.5 < agree <= 1.0:
            raise PolicyLoadError(f"a committee needs members and an agreement share in (0.5, 1], got {len(members)} and {agree}")
        self.members, self.fallback, self.agree = list(members), fallback, float(agree)
        self.need = math.ceil(self.agree * len(self.members) - 1e-9)  # > half: one action at most
        self.dims = fallback.dims

    def __call__(self, obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        out = self.fallback(obs, mask)
        votes = np.stack([m(obs, mask) for m in self.members])  # (members, ..., knobs)
        for choice in votes:
            backed = (votes == choice).all(-1).sum(0) >= self.need  # members choosing this whole action
            out = np.where(backed[..., None], choice, out)
        return out


_ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "identity": lambda x: x,
}


# ------------------------------------------------------------------------------ export / load
def actor_tensors(policy: Any, prefix: str = "") -> tuple[dict[str, np.ndarray], str, int]:
    """An SB3 actor-critic policy's actor (policy branch + action net) as named arrays, its
    activation and its number of linear layers."""
    import torch

    if not hasattr(policy, "mlp_extractor") or not hasattr(policy, "action_net"):
        raise PolicyLoadError(f"cannot export {type(policy).__name__}: only actor-critic MLP policies (ppo, a2c, maskable_ppo) are supported")
    tensors: dict[str, np.ndarray] = {}
    activation = "identity"
    n = 0
    for module in [*policy.mlp_extractor.policy_net, policy.action_net]:
        if isinstance(module, torch.nn.Linear):
            tensors[f"{prefix}layer{n}.weight"] = module.weight.detach().cpu().numpy()
            tensors[f"{prefix}layer{n}.bias"] = module.bias.detach().cpu().numpy()
            n += 1
        else:
            activation = type(module).__name__.lower()
    return tensors, activation, n


def export_policy(model: Any, codec: Any, directory: str | Path, meta: dict[str, Any],
                  committee: tuple[Sequence[Any], float] | None = None) -> Path:
    """Write an SB3 actor-critic ``model``'s actor as plain weights + JSON (no pickle) to ``directory``.

    ``meta`` carries what serving needs besides the codec: ``base`` (the heuristic spec),
    ``env_id``, ``env_kwargs``, ``algo``. ``committee`` (member policies of the same architecture,
    agreement share) makes a :class:`CommitteeNet` with ``model``'s actor as the fallback.
    """
    from safetensors.numpy import save_file

    tensors, activation, n = actor_tensors(model.policy)
    version = POLICY_FORMAT_VERSION
    extra: dict[str, Any] = {}
    if committee is not None:
        members, agree = committee
        for j, member in enumerate(members):
            tensors.update(actor_tensors(member, f"member{j}.")[0])
        version = COMMITTEE_FORMAT_VERSION
        extra["committee"] = {"members": len(members), "agree": float(agree)}
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out / "policy.safetensors"))
    spec = {
        "format": POLICY_FORMAT,
        "format_version": version,
        "codec": codec.to_dict(),
        "net": {
            "layers": n,
            "activation": activation,
            "action_dims": [int(x) for x in model.action_space.nvec],
            "masked": type(model).__name__ == "MaskablePPO",
            "obs_size": int(model.observation_space.shape[0]),
            **extra,
        },
        **meta,
    }
    (out / "policy.json").write_text(json.dumps(spec, indent=2))
    (out / "codec.json").write_text(json.dumps(codec.to_dict(), indent=2))
    return out


def resolve_ref(ref: str) -> Path:
    """A local directory holding ``policy.json`` for a path, ``runs:/...`` or ``models:/...`` ref."""
    if ref.startswith(("runs:/", "models:/")):
        from training.tracking import download_ref

        try:
            local = download_ref(ref)
        except ValueError as e:
            raise PolicyLoadError(f"policy: {e}") from None
    else:
        local = Path(ref).expanduser()
        if not local.exists():
            raise PolicyLoadError(f"policy {ref!r} does not exist: pass a policy directory, runs:/<run_id>/policy or models:/<name>@<alias>")
    for candidate in (local, local / "policy", local / "artifacts" / "policy", local.parent if local.is_file() else local):
        if (candidate / "policy.json").is_file():
            return candidate
    found = sorted(local.rglob("policy.json")) if local.is_dir() else []
    if len(found) == 1:
        return found[0].parent
    raise PolicyLoadError(f"{ref!r} holds no policy.json: point at a directory written by training/train.py (e.g. <run>/policy)")


def load_policy_dir(directory: Path) -> tuple[dict[str, Any], PolicyNet | CommitteeNet]:
    """Read ``policy.json`` + ``policy.safetensors`` (validated) from ``directory``."""
    from safetensors.numpy import load_file

    try:
        spec = json.loads((directory / "policy.json").read_text())
    except json.JSONDecodeError as e:
        raise PolicyLoadError(f"{directory / 'policy.json'} is not valid JSON ({e}); re-export the policy") from None
    if spec.get("format") != POLICY_FORMAT or spec.get("format_version") not in (POLICY_FORMAT_VERSION, COMMITTEE_FORMAT_VERSION):
        raise PolicyLoadError(
            f"{directory / 'policy.json'}: format {spec.get('format')!r} v{spec.get('format_version')} is not "
            f"{POLICY_FORMAT!r} v{POLICY_FORMAT_VERSION} or v{COMMITTEE_FORMAT_VERSION}; re-export it with this specctl's training/train.py"
        )
    weights_file = directory / "policy.safetensors"
    if not weights_file.is_file():
        raise PolicyLoadError(f"{weights_file} is missing; the policy directory is incomplete")
    tensors = load_file(str(weights_file))
    net = spec["net"]

    def build(prefix: str) -> PolicyNet:
        pn = PolicyNet.from_tensors(tensors, net["layers"], net["activation"], net["action_dims"], net["masked"], prefix, str(weights_file))
        if pn.layers[0][0].shape[0] != net["obs_size"] or pn.layers[-1][0].shape[1] != sum(net["action_dims"]):
            raise PolicyLoadError(f"{weights_file}: weight shapes do not match policy.json (obs {net['obs_size']}, actions {sum(net['action_dims'])})")
        return pn

    committee = net.get("committee")
    if spec["format_version"] == COMMITTEE_FORMAT_VERSION:
        if not isinstance(committee, dict) or not isinstance(committee.get("members"), int) or committee["members"] < 1:
            raise PolicyLoadError(f"{directory / 'policy.json'}: v{COMMITTEE_FORMAT_VERSION} needs net.committee "
                                  "{members: N >= 1, agree: share}; re-export the policy")
        members = [build(f"member{j}.") for j in range(committee["members"])]
        return spec, CommitteeNet(members, build(""), float(committee.get("agree", 0)))
    return spec, build("")


def load_knob_policy(spec: dict[str, Any], net: PolicyNet | CommitteeNet, source: str = "") -> Controller:
    """A knob policy (``specctl/SpecKnobs-v0``): a :class:`controllers.knobs.KnobController`
    whose knobs the network sets every ``interval_s``. Site-agnostic: it binds to any scenario
    on which one of its modes runs."""
    from controllers.knobs import KNOB_VERSION, KnobController

    knobs = spec.get("knobs") or {}
    if knobs.get("version") != KNOB_VERSION:
        raise PolicyLoadError(f"policy {source!r}: knob format v{knobs.get('version')} is not v{KNOB_VERSION}; retrain it with this specctl")
    ctl = KnobController(modes=knobs["modes"], interval_s=float(knobs["interval_s"]), act=net)
    if ctl.n_features != spec["net"]["obs_size"] or ctl.action_dims != list(spec["net"]["action_dims"]):
        raise PolicyLoadError(f"policy {source!r}: network shape does not match its knob layout; re-export the policy")
    ctl.name = "knob-policy"
    return ctl


class PolicyController(Controller):
    """A trained policy in the controller slot, composed with the heuristic it was trained with.

    ``policy:<ref>`` in ``--controller`` builds one through :meth:`load`. The codec is checked
    against the runtime's scenario in :meth:`bind`; a mismatch raises
    :class:`policy_env.codec.CodecMismatch` naming every difference.
    """

    name = "policy"

    def __init__(self, spec: dict[str, Any], net: PolicyNet | CommitteeNet, source: str = "") -> None:
        super().__init__()
        from controllers.registry import make_controller
        from policy_env.codec import Codec
        from policy_env.control import build_controller

        self.spec = spec
        self.net = net
        self.source = source
        self.codec = Codec.from_dict(spec["codec"])
        if int(np.sum(self.codec.action_space().nvec)) != int(sum(net.dims)) or self.codec.obs_size != spec["net"]["obs_size"]:
            raise PolicyLoadError(f"policy {source!r}: network shape does not match its codec; re-export the policy")
        self.heuristic = make_controller(spec["base"])
        self.inner, self.part = build_controller(self.codec, self.heuristic, act=net)
        self.owns = frozenset(self.codec.owns)
        self.name = f"policy({spec.get('base', '?')})"

    @classmethod
    def load(cls, ref: str) -> "PolicyController":
        """From a policy directory, ``runs:/<run_id>/<path>`` or ``models:/<name>@<alias>``."""
        if not ref:
            raise PolicyLoadError("policy: needs a reference: policy:<dir>, policy:runs:/<run_id>/policy or policy:models:/<name>@<alias>")
        directory = resolve_ref(ref)
        spec, net = load_policy_dir(directory)
        if spec.get("kind") == "knobs":
            return load_knob_policy(spec, net, ref)  # type: ignore[return-value]
        return cls(spec, net, source=ref)

    def bind(self, info: RuntimeInfo) -> None:
        self.codec.check(info)
        super().bind(info)
        self.inner.bind(info)

    # every call goes through the composite: the agent's part for owned decisions, the heuristic else
    def decide(self, point: DecisionPoint):  # type: ignore[override]
        return self.inner.decide(point)

    def prepare(self, point: DecisionPoint) -> None:
        self.inner.prepare(point)

    def on_batch_done(self, result: BatchResult) -> None:
        self.inner.on_batch_done(result)

    def admit(self, req: RequestView, sys: SystemView) -> bool:
        return self.inner.admit(req, sys)

    def drafter_site(self, req: RequestView, sys: SystemView) -> str:
        return self.inner.drafter_site(req, sys)

    def draft_length(self, req: RequestView, sys: SystemView, site: str) -> int:
        return self.inner.draft_length(req, sys, site)

    def redundancy(self, req: RequestView, sys: SystemView, site: str, k: int) -> Redundancy:
        return self.inner.redundancy(req, sys, site, k)

    def select_batch(self, ready: Sequence[RequestView], sys: SystemView) -> list[int]:
        return self.inner.select_batch(ready, sys)
