"""The observation/action codec: one versioned object shared by training and deployment.

A :class:`Codec` turns a :class:`runtime.contract.DecisionPoint` into a fixed-size observation
(global state + ``n_slots`` request slots, padded, with a presence bit) and turns an action back
into per-request answers. The env and the deployed :class:`controllers.policy.PolicyController`
both call exactly these methods, and the codec's JSON spec is saved with every checkpoint, so
training and serving cannot drift apart. :meth:`Codec.check` compares a saved codec with a
runtime's scenario and names every difference.

Slots: the requests a point lists, most urgent first. A plan point presents its arrivals awaiting
admission (``point.admit``, in arrival order, when the agent owns admission) and then the requests
starting a round (``point.plan``, by deadline, when it owns a plan decision); one with more than
``n_slots`` requests is presented in chunks of ``n_slots`` (one agent step each). A batch point
shows its ``n_slots`` most urgent ready requests. The last per-slot action dimension is the
*accept* bit: include-in-batch at batch points, admit (1) or turn away (0) for arrivals at plan
points.

Version history: 1 (four decisions, admission with the heuristic); 2 (admission bit, the
``admitting`` slot feature and the ``arrivals`` global feature); 3 (the ``ahead`` slot feature:
draft tokens a draft-ahead stream has delivered; on runtimes with ``RuntimeInfo.draft_ahead``
every remote or edge round drafts ahead, and a hedged backup of a round with nothing streamed
in starts at once).
"""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass, replace
from operator import methodcaller
from typing import Any, Sequence

import numpy as np
from gymnasium import spaces

from runtime.contract import DecisionPoint, Redundancy, RequestView, RuntimeInfo, NO_REDUNDANCY

CODEC_VERSION = 3
#: Decisions an agent may own (all five of the controller slot).
AGENT_DECISIONS = ("admission", "draft_length", "drafter_site", "redundancy", "batch")
#: The speculation decisions: what :meth:`Codec.for_runtime` owns unless told (admission is opt-in).
SPEC_DECISIONS = ("draft_length", "drafter_site", "redundancy", "batch")
PLAN_DECISIONS = frozenset({"draft_length", "drafter_site", "redundancy"})

#: Per-slot features, in order (documented in the env's docstring); ``admitting`` only when the
#: codec owns admission (a codec that does not keeps the version-1 layout).
SLOT_FEATURES = (
    "present", "slack", "tokens_left", "context", "alpha", "last_k", "last_accepted",
    "prefill", "ready_k", "ready_wait", "tpot_slo", "at_target", "ahead", "admitting",
)
#: Global features before the per-site block (``arrivals`` only when the codec owns admission).
GLOBAL_FEATURES = (
    "is_plan", "point_size", "chunks_left", "verify_queue", "in_flight", "verifier_busy",
    "verify_time", "last_batch_size", "target_load", "arrivals",
)
#: Per drafter-site option (non-edge): load, queue, rtt, busy.
SITE_FEATURES = ("load", "queue", "rtt", "busy")
EDGE = "edge"  # the site option meaning "the request's own edge device"


class CodecMismatch(ValueError):
    """A saved codec does not fit the runtime's scenario; the message lists every difference."""


@dataclass(frozen=True)
class Codec:
    """Observation layout and action decoding for one scenario shape.

    ``site_options`` are named drafter sites plus ``"edge"`` (the request's own device), so an
    edge fleet of any size needs one option. ``owns`` says which dimensions the agent controls;
    the action keeps all four per-slot dimensions (k, site, redundancy, include) but the ones it
    does not own are masked to a single value and ignored.
    """

    owns: tuple[str, ...]
    n_slots: int
    max_k: int
    site_options: tuple[str, ...]
    target_site: str
    max_batch_size: int
    max_batch_tokens: int
    max_redundancy: int
    prior_alpha: float
    version: int = CODEC_VERSION
    scenario: str = ""

    # ---------------------------------------------------------------- construction / (de)serialise
    @classmethod
    def for_runtime(cls, info: RuntimeInfo, owns: Sequence[str] = SPEC_DECISIONS, n_slots: int = 16) -> "Codec":
        bad = [d for d in owns if d not in AGENT_DECISIONS]
        if bad or not owns:
            raise ValueError(f"owns must be a non-empty subset of {list(AGENT_DECISIONS)}, got {list(owns)}")
        if n_slots < 1:
            raise ValueError(f"n_slots must be >= 1, got {n_slots}")
        opts = [info.target_site] if info.site(info.target_site).drafter else []
        opts += [s.name for s in info.sites if s.role == "remote" and s.drafter]
        if any(s.role == "edge" and s.drafter for s in info.sites):
            opts.append(EDGE)
        if not opts:
            raise ValueError(f"scenario {info.scenario} has no site that can draft")
        alpha = float(np.mean(list(info.prior_alpha.values()))) if info.prior_alpha else 0.7
        return cls(
            owns=tuple(d for d in AGENT_DECISIONS if d in owns), n_slots=n_slots, max_k=info.max_k,
            site_options=tuple(opts), target_site=info.target_site, max_batch_size=info.max_batch_size,
            max_batch_tokens=info.max_batch_tokens, max_redundancy=info.max_redundancy,
            prior_alpha=round(alpha, 6), scenario=info.scenario,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["owns"] = list(self.owns)
        d["site_options"] = list(self.site_options)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Codec":
        if d.get("version") != CODEC_VERSION:
            raise CodecMismatch(
                f"codec version {d.get('version')} is not supported (this specctl reads version {CODEC_VERSION}); retrain or use a matching specctl"
            )
        d = dict(d)
        d["owns"] = tuple(d["owns"])
        d["site_options"] = tuple(d["site_options"])
        return cls(**d)

    def check(self, info: RuntimeInfo) -> None:
        """Raise :class:`CodecMismatch` naming every field where ``info`` differs from the codec."""
        fresh = Codec.for_runtime(info, self.owns, self.n_slots)
        diffs = [
            f"{name}: checkpoint {getattr(self, name)!r} vs runtime {getattr(fresh, name)!r}"
            for name in ("site_options", "target_site", "max_k", "max_batch_size", "max_batch_tokens", "max_redundancy")
            if getattr(self, name) != getattr(fresh, name)
        ]
        if diffs:
            raise CodecMismatch(
                f"policy trained on scenario {self.scenario!r} does not fit scenario {info.scenario!r}: "
                + "; ".join(diffs) + " (retrain on this scenario or run the one it was trained on)"
            )

    # ---------------------------------------------------------------- spaces
    @property
    def plan_owned(self) -> bool:
        return bool(PLAN_DECISIONS.intersection(self.owns))

    @property
    def batch_owned(self) -> bool:
        return "batch" in self.owns

    @property
    def admission_owned(self) -> bool:
        return "admission" in self.owns

    @property
    def dims(self) -> tuple[int, int, int, int]:
        """Choices per slot: k, site option, redundancy (0 none, 1 hedged backup), accept bit
        (include in the batch at batch points; admit an arrival at plan points)."""
        return (self.max_k + 1, len(self.site_options), 2, 2)

    @property
    def obs_size(self) -> int:
        n_sites = sum(1 for s in self.site_options if s != EDGE)
        return len(self.global_features) + len(SITE_FEATURES) * n_sites + len(self.slot_features) * self.n_slots

    @property
    def global_features(self) -> tuple[str, ...]:
        return GLOBAL_FEATURES if self.admission_owned else GLOBAL_FEATURES[:-1]

    @property
    def slot_features(self) -> tuple[str, ...]:
        return SLOT_FEATURES if self.admission_owned else SLOT_FEATURES[:-1]

    def observation_space(self) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, shape=(self.obs_size,), dtype=np.float32)

    def action_space(self) -> spaces.MultiDiscrete:
        return spaces.MultiDiscrete(np.tile(np.array(self.dims, dtype=np.int64), self.n_slots))

    # ---------------------------------------------------------------- slots
    def wants(self, point: DecisionPoint) -> bool:
        """Does the agent decide anything at this point?"""
        if point.kind == "plan":
            return (self.plan_owned and bool(point.plan)) or (self.admission_owned and bool(point.admit))
        return self.batch_owned and bool(point.ready)

    def slots(self, point: DecisionPoint) -> list[RequestView]:
        """The point's requests most urgent first: at a plan point its arrivals (if the agent owns
        admission; arrival order) then its round starts (if it owns a plan decision; by deadline),
        answered in chunks of ``n_slots``; the ``n_slots`` most urgent of a batch point's."""
        if point.kind == "plan":
            out = list(point.admit) if self.admission_owned else []
            if self.plan_owned:
                out += sorted(point.plan, key=_deadline)
            return out
        return heapq.nsmallest(self.n_slots, point.ready, key=_deadline)

    def admitting(self, point: DecisionPoint) -> int:
        """How many of :meth:`slots` (the first ones) are arrivals awaiting admission."""
        return len(point.admit) if point.kind == "plan" and self.admission_owned else 0

    # ---------------------------------------------------------------- observation
    def encode(self, point: DecisionPoint, chunk: Sequence[RequestView], chunks_left: int, out: np.ndarray, n_admit: int = 0) -> np.ndarray:
        """Write the observation for ``chunk`` of ``point`` into ``out`` (preallocated, float32).

        The first ``n_admit`` requests of ``chunk`` are arrivals awaiting admission."""
        out[:] = 0.0
        sys = point.system
        now = point.time
        n_req = len(point.plan) if point.kind == "plan" else len(point.ready)
        out[0] = 1.0 if point.kind == "plan" else -1.0
        out[1] = min(n_req / 64.0, 1.0)
        out[2] = min(chunks_left / 4.0, 1.0)
        out[3] = min(sys.verify_queue / 64.0, 1.0)
        out[4] = min(sys.in_flight / 256.0, 1.0)
        out[5] = 1.0 if sys.verifier_busy else 0.0
        out[6] = min(sys.verify_time_ewma / 0.1, 1.0)
        out[7] = min(sys.last_batch_size / 64.0, 1.0)
        admission = self.admission_owned
        if admission:
            out[9] = min(len(point.admit) / 8.0, 1.0) if point.kind == "plan" else 0.0
        i = len(self.global_features)
        for name in self.site_options:
            if name == EDGE:
                continue
            st = sys.site_state(name)
            if name == self.target_site:
                out[8] = st.load
            out[i] = st.load
            out[i + 1] = min(st.queue / 32.0, 1.0)
            out[i + 2] = min(st.rtt_s / 0.1, 1.0)
            out[i + 3] = 1.0 if st.busy else 0.0
            i += 4
        if chunk:
            prior = self.prior_alpha
            target = self.target_site
            batch = point.kind == "batch"
            rows = [
                (
                    1.0,
                    (r.deadline() - now) / r.tpot_slo,
                    r.max_tokens - r.generated,
                    r.prompt_tokens + r.generated,
                    r.alpha_estimate(prior),
                    r.last_k,
                    r.last_accepted,
                    r.phase == "prefill",
                    r.ready_k,
                    (now - r.ready_since) / r.tpot_slo if batch else 0.0,
                    r.tpot_slo,
                    r.drafter_site is None or r.drafter_site == target,
                    r.ahead_tokens,
                    j < n_admit,
                )[: 14 if admission else 13]
                for j, r in enumerate(chunk)
            ]
            block = np.array(rows, dtype=np.float32)
            block *= self._scale
            np.clip(block, -1.0, 1.0, out=block)
            out[i : i + block.size] = block.ravel()
        return out

    @property
    def _scale(self) -> np.ndarray:
        """Per-slot feature scales (:attr:`slot_features` order); values are clipped to [-1, 1] after."""
        k = 1.0 / self.max_k
        return np.array([1, 1 / 32, 1 / 512, 1 / 4096, 1, k, k, 1, k, 1, 1 / 0.2, 1, k, 1][: len(self.slot_features)], dtype=np.float32)

    # ---------------------------------------------------------------- masks
    def action_masks(self, point: DecisionPoint, chunk: Sequence[RequestView], info: RuntimeInfo, n_admit: int = 0) -> np.ndarray:
        """Flat boolean mask (MaskablePPO layout): per slot, k | site | redundancy | accept.

        Every dimension of an empty slot, and every dimension the agent does not own at this
        point, allows option 0 only. The first ``n_admit`` slots of a plan point's chunk are
        arrivals: only their accept (admit) bit is free.
        """
        nk, ns, _, _ = self.dims
        tables = self._tables(info)
        mask = tables["empty"].copy()
        n = len(chunk)
        if not n:
            return mask.reshape(-1)
        owns = self.owns
        if point.kind == "plan":
            if n_admit:
                mask[:n_admit, nk + ns + 3] = True  # admit (1) or turn away (0)
            plans = chunk[n_admit:]
            m = mask[n_admit:n]  # a view: the slots of requests starting a round
            if plans and "draft_length" in owns:
                kmax = [max(0, min(self.max_k, r.max_tokens - r.generated - 1)) for r in plans]
                m[:, :nk] = tables["k"][kmax]
            if plans and ("drafter_site" in owns or "redundancy" in owns):
                origin = [tables["origin"][r.origin] for r in plans]
                if "drafter_site" in owns:
                    m[:, nk : nk + ns] = tables["site"][origin]
                if "redundancy" in owns:
                    m[:, nk + ns + 1] = tables["hedge"][origin]
        elif "batch" in owns:
            mask[:n, nk + ns + 3] = True
        return mask.reshape(-1)

    def _tables(self, info: RuntimeInfo) -> dict[str, Any]:
        """Per-runtime lookup tables for masks and decoding (built once, cached on the codec)."""
        cached = self.__dict__.get("_cache")
        if cached is not None and cached["info"] is info:
            return cached
        nk, ns, _, _ = self.dims
        empty = np.zeros((self.n_slots, nk + ns + 4), dtype=bool)
        empty[:, [0, nk, nk + ns, nk + ns + 2]] = True
        origins = sorted({s.name for s in info.sites})
        site_rows, hedge, backup = [], [], {}
        for o in origins:
            probe = _Origin(o)
            allowed = info.allowed_sites(probe)  # type: ignore[arg-type]
            row = np.array([(o if opt == EDGE else opt) in allowed for opt in self.site_options])
            if not row.any():
                row[0] = True
            site_rows.append(row)
            hedge.append(self.max_redundancy > 1 and len(allowed) > 1)
            for site in allowed:
                others = [s for s in allowed if s != site]
                if others:
                    backup[(o, site)] = (
                        info.target_site if info.target_site in others else min(others, key=lambda s: info.site(s).rtt_s)
                    )
        tables = {
            "info": info,
            "empty": empty,
            "k": np.tril(np.ones((nk, nk), dtype=bool)),  # row kmax allows k = 0..kmax
            "origin": {o: i for i, o in enumerate(origins)},
            "site": np.array(site_rows, dtype=bool),
            "hedge": np.array(hedge, dtype=bool),
            "allowed": {o: frozenset(info.allowed_sites(_Origin(o))) for o in origins},  # type: ignore[arg-type]
            "backup": backup,
        }
        object.__setattr__(self, "_cache", tables)  # frozen dataclass: a cache, not a field
        return tables

    # ---------------------------------------------------------------- decoding
    def decode_admit(self, action: np.ndarray, arrivals: Sequence[RequestView]) -> list[bool]:
        """Admit (accept bit 1) or turn away (0) each arrival in the first ``len(arrivals)`` slots."""
        accept = np.asarray(action).reshape(self.n_slots, 4)[: len(arrivals), 3].tolist()
        return [a == 1 for a in accept]

    def decode_plans(self, action: np.ndarray, chunk: Sequence[RequestView], info: RuntimeInfo, skip: int = 0) -> list[tuple[int, str | None, Redundancy | None]]:
        """Per slot (k, site, redundancy); ``None`` (k: -1) where the agent does not own the decision.

        ``chunk`` fills the slots from ``skip`` on (the slots before it hold arrivals). Invalid
        choices (an unmasked policy) are repaired: k is clipped to what the request can use, a
        site that cannot draft for it is replaced by the heuristic's answer.
        """
        rows = np.asarray(action).reshape(self.n_slots, 4)[skip:].tolist()
        tables = self._tables(info)
        allowed_by = tables["allowed"]
        own_k = "draft_length" in self.owns
        own_site = "drafter_site" in self.owns
        own_red = "redundancy" in self.owns and self.max_redundancy > 1
        opts = self.site_options
        n_opts = len(opts)
        max_k = self.max_k
        out: list[tuple[int, str | None, Redundancy | None]] = []
        for (a_k, a_site, a_red, _), req in zip(rows, chunk):
            k = -1
            if own_k:
                left = req.max_tokens - req.generated - 1
                k = a_k if a_k < max_k else max_k
                if k > left:
                    k = left if left > 0 else 0
                if k < 0:
                    k = 0
            site = None
            if own_site:
                opt = opts[a_site if a_site < n_opts else n_opts - 1]
                site = req.origin if opt == EDGE else opt
                if site not in allowed_by[req.origin]:
                    site = None
            red = None
            if own_red:
                red = _hedged_backup if a_red == 1 else NO_REDUNDANCY
            elif "redundancy" in self.owns:
                red = NO_REDUNDANCY
            out.append((k, site, red))
        return out

    def decode_batch(self, action: np.ndarray, slots: Sequence[RequestView], rest: Sequence[RequestView]) -> list[int]:
        """Rids to verify: the included slots (urgent first), then ``rest`` in order, within limits.

        Requests that would break the batch-size or batched-token limit are skipped, so the
        answer is always valid. No slot included and no ``rest``: wait (``[]``).
        """
        include = np.asarray(action).reshape(self.n_slots, 4)[:, 3].tolist()
        out: list[int] = []
        tokens = 0
        cap_n, cap_t = self.max_batch_size, self.max_batch_tokens
        for inc, req in zip(include, slots):
            if inc != 1:
                continue
            t = req.prompt_tokens if req.phase == "prefill" else req.ready_k + 1
            if out and (len(out) >= cap_n or tokens + t > cap_t):
                continue
            out.append(req.rid)
            tokens += t
        for req in rest:
            t = req.prompt_tokens if req.phase == "prefill" else req.ready_k + 1
            if out and (len(out) >= cap_n or tokens + t > cap_t):
                break
            out.append(req.rid)
            tokens += t
        return out

    def backup_site(self, info: RuntimeInfo, origin: str, site: str) -> str | None:
        """The hedged backup for a round drafted at ``site``: the target if remote, else the nearest."""
        return self._tables(info)["backup"].get((origin, site))


class _Origin:
    """Stands in for a request from ``origin`` when asking which sites may draft for it."""

    __slots__ = ("origin",)

    def __init__(self, origin: str) -> None:
        self.origin = origin


#: Sentinel: "one hedged backup" (the concrete Redundancy depends on the primary site).
_hedged_backup = Redundancy(backups=("?",))


def hedged_backup(codec: Codec, req: RequestView, sys: Any, info: RuntimeInfo, site: str, k: int) -> Redundancy:
    """One backup drafter for ``req``: the target itself if ``site`` is remote (WANSpec's local
    backup), else the nearest other allowed site; launched when the primary is late by its
    expected round trip plus draft time, or at once when a draft-ahead primary has streamed
    nothing in yet (the round after a rejection)."""
    backup = codec.backup_site(info, req.origin, site)
    if backup is None:
        return drafting_ahead(info, site, NO_REDUNDANCY)
    ahead = drafts_ahead(info, site)
    if ahead and req.ahead_tokens == 0:
        return Redundancy(backups=(backup,), hedge_after_s=0.0, ahead=True)
    expected = sys.site_state(site).rtt_s + sys.estimate_draft_time(site, 1, k, req.prompt_tokens + req.generated)
    return Redundancy(backups=(backup,), hedge_after_s=1.5 * expected, ahead=ahead)


def drafts_ahead(info: RuntimeInfo, site: str) -> bool:
    """Codec version 3: a round at a remote or edge site drafts ahead where the runtime can."""
    return info.draft_ahead and site != info.target_site


def drafting_ahead(info: RuntimeInfo, site: str, red: Redundancy) -> Redundancy:
    """``red`` with draft-ahead switched on where :func:`drafts_ahead` says so."""
    return replace(red, ahead=True) if drafts_ahead(info, site) and not red.ahead else red


_deadline = methodcaller("deadline")


def block_period(dims: Sequence[int] | np.ndarray) -> int:
    """Length of the repeating block of ``dims`` (the per-slot action dimensions)."""
    dims = np.asarray(dims)
    n = len(dims)
    for p in range(1, n + 1):
        if n % p == 0 and np.array_equal(np.tile(dims[:p], n // p), dims):
            return p
    return n
