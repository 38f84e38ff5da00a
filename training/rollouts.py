"""Policy improvement by simulated rollouts: learn which heuristic and knobs fit each moment.

PPO from a clone learns little at a few thousand control steps: one episode is one noisy sample
of a workload, and the gain of a better knob is a few percent of it. The simulator offers more
than samples: it can be copied mid-run. At chosen moments of episodes that the current policy
runs, the env is deep-copied once per candidate (:func:`candidate_actions`: the policy's action
with one knob changed: its mode, admission cap, draft-length cap or hedging); each copy holds
its candidate for ``horizon_s`` simulated seconds, then counts the requests still in flight and
on track. Every copy sees the
same arrivals and random draws (common random numbers), so the difference between two
candidates is their effect, not the workload's noise.

The policy is then fitted to the best candidate of each state (:func:`improve`) as
cost-sensitive classification: a state weighs more when the choice matters more, and where no
candidate beats the policy's own action by ``min_gain`` the label stays that action. This is
approximate policy iteration with rollouts (Lagoudakis & Parr 2003) and rollout with several
base heuristics (Bertsekas et al. 1997): state by state, the rollout choice is at least as good
as holding any candidate, so its distillation can beat every fixed setting where the best one
changes with the system or over time (load flips, bursts). States come from the policy being
improved (with random detours, so it also learns to leave knobs it would not have set) and are
aggregated over iterations (DAgger).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROLLOUT_DEFAULTS: dict[str, Any] = {
    "iterations": 1,  # label-then-fit rounds; each labels states the newest policy visits
    "systems": 8,  # training systems (episodes of the distribution) per iteration
    "at_s": [5.0, 20.0, 35.0, 50.0],  # moments of each episode to label, in simulated seconds
    "horizon_s": 15.0,  # how long each candidate is held in its rollout
    "caps": [1.0, 1.5, 2.0, 3.0],  # admission caps tried (x max batch) at the current mode
    # draft-length caps tried at the current mode and cap, and whether to try hedging switched
    # over: off by default; on in knobs-hedge.yaml, which gains on edge-fleet and loses elsewhere
    # (docs/knob-results-history.md)
    "k_caps": [],
    "hedge": False,
    # whether the other modes (heuristics) are candidates too, and random detours may switch to
    # them; false: only the current mode's caps (and k caps, hedging) are tried. With false and
    # 40-s horizons at 5 and 15 s, one training seed of three learned a cap that beats its warm
    # start (docs/knob-results-history.md, "Rollouts that learn the admission cap")
    "modes": True,
    "min_gain": 0.03,  # relabel only where the current action loses this share of the best value
    # what a gain is a share of: "best", the best candidate's value, or "demand", the requests in
    # flight at the labelled moment plus those arriving in the horizon (the same for every
    # candidate): a share of the workload, so a state where nothing finishes on track under any
    # candidate cannot weigh ~100% (docs/knob-results-history.md)
    "gain_per": "best",
    # independent futures on which the best candidate and the current action are rolled out again
    # where the best wins by min_gain: the label needs the gain on those too (0: no confirmation)
    "confirm": 0,
    "explore": 0.5,  # chance to hold a random candidate for explore_s before a labelled moment
    "explore_s": 4.0,  # (at least one control step: with 5-s steps a 4-s window would hold no step)
    "epochs": 300,
    "learning_rate": 3e-3,
    # weight of each warm-start state, kept in every fit with the warm start's fixed knobs as its
    # label: where no labelled state is near, the policy keeps the fixed setting instead of
    # extrapolating from a few dozen labels (0: the fit sees the labelled states only)
    "anchor": 0.0,
    # systems surveyed before the first iteration: each mode that runs there is held for a whole
    # episode (the warm start's other knobs), and the states of every such episode are labelled
    # with the modes' episode goodputs: which heuristic fits a system, judged over a run rather
    # than a horizon_s window, at no forks. 0 (none) by default: with 16 it raised validation on
    # the mix and lowered goodput on the held-out files (docs/knob-results-history.md)
    "survey": 0,
    # members of a committee (0: one network): each is fitted from the warm start to a bootstrap
    # resample of the labelled systems, and the deployed policy takes the whole action that at
    # least ``agree`` of them choose, else the warm start's; measured safe and no better than the
    # warm start, so off by default (docs/knob-results-history.md, "Committees")
    "committee": 0,
    "agree": 0.75,
}


@dataclass
class Labelled:
    """One labelled state: what the policy saw and could set, the action it took and that
    action's rollout value, and the candidates it was compared with and their values."""

    obs: np.ndarray
    mask: np.ndarray
    current: np.ndarray
    current_value: float
    actions: np.ndarray  # (candidates, 4) knob level indices
    values: np.ndarray  # (candidates,)
    seed: int
    time_s: float
    # the best candidate's mean gain over the current action on independent futures, as a share
    # of its value (NaN: not confirmed, because nothing beat the current action or confirm is 0)
    confirmed: float = math.nan
    # the requests in flight at this moment plus those arriving in the rollouts' horizon, in
    # reward units (NaN: not measured)
    demand: float = math.nan


def save_labels(data: Sequence[Labelled], path: Path) -> Path:
    """The labelled states as ``.npz`` (obs, masks, current actions and values, candidates and
    their values padded with -1 / NaN, seeds, times): what the policy was fitted to."""
    n = max(len(d.values) for d in data)
    acts = np.full((len(data), n, 4), -1, dtype=np.int64)
    vals = np.full((len(data), n), np.nan)
    for i, d in enumerate(data):
        acts[i, : len(d.values)] = d.actions
        vals[i, : len(d.values)] = d.values
    np.savez_compressed(path, obs=np.stack([d.obs for d in data]), mask=np.stack([d.mask for d in data]),
                        current=np.stack([d.current for d in data]), current_value=np.array([d.current_value for d in data]),
                        actions=acts, values=vals, seed=np.array([d.seed for d in data]), time_s=np.array([d.time_s for d in data]),
                        confirmed=np.array([d.confirmed for d in data]), demand=np.array([d.demand for d in data]))
    return path


def candidate_actions(current: np.ndarray, caps: Sequence[float], valid: Sequence[bool],
                      k_caps: Sequence[int] = (), hedge: bool = False, modes: bool = True) -> np.ndarray:
    """One knob moved at a time from ``current``: every mode that runs here (``modes``; else the
    current one), the current mode at every cap in ``caps``, at every draft-length cap in
    ``k_caps``, and (``hedge``) with its hedging switched over, at the current cap and at every
    cap in ``caps``. Coordinate-wise (but for hedging x cap), so a state costs modes + 2 caps +
    k caps + 1 rollouts, not their product; the iterations move the other coordinates."""
    from controllers.knobs import cap_level, k_cap_level

    mode, cap, k, h = (int(x) for x in current)
    out = [(m, cap, k, h) for m in range(len(valid)) if valid[m] and (modes or m == mode)]
    if valid[mode]:
        out += [(mode, cap_level(c), k, h) for c in caps]
        out += [(mode, cap, k_cap_level(kc), h) for kc in k_caps]
        # hedging trades target GPU time for latency, so whether it pays depends on the admission
        # cap: switched over, it is tried at every cap too (on edge-fleet at 32 req/s hedging off
        # gains 4% at the warm start's cap and 10% with cap 3x, where cap 3x alone loses 2%)
        out += [(mode, c, k, 1 - h) for c in dict.fromkeys([cap, *(cap_level(c) for c in caps)])] if hedge else []
    return np.array(list(dict.fromkeys(out)), dtype=np.int64)


def rollout_value(env: Any, action: np.ndarray, steps: int) -> float:
    """SLO-met completions (in reward units) of holding ``action`` for ``steps`` control steps
    from ``env``'s state, plus :func:`in_flight_credit` at the end.

    Undiscounted, because the objective is goodput over the run: discounting the rollout (as
    PPO's half-life does) rewards draining the system now over admitting what completes later,
    and measured on edge-fleet it ranked the lowest admission cap first while the highest wins
    over a whole run. The credit stops the horizon from doing the same."""
    total = 0.0
    for _ in range(steps):
        _, r, term, _, _ = env.step(action)
        total += r
        if term:
            return total
    return total + in_flight_credit(env)


def in_flight_credit(env: Any) -> float:
    """:func:`controllers.lookahead.on_track_credit` in reward units: requests still in flight at
    a rollout's end, counted as met by their share of tokens when they are on track for their SLOs."""
    from controllers.lookahead import on_track_credit

    return on_track_credit(env.sim) / env.reward_scale


def label_episode(job: tuple[str, dict[str, Any], int, dict[str, Any]]) -> list[Labelled]:
    """Run the policy in ``policy_dir`` on the system of ``sim_seed`` and label the states at
    ``cfg["at_s"]`` by rollouts of every candidate (one worker process's job)."""
    from controllers.knobs import cap_level, k_cap_level
    from controllers.policy import load_policy_dir
    from policy_env.knobs_env import SpecKnobsEnv

    policy_dir, env_kwargs, sim_seed, cfg = job
    _, net = load_policy_dir(Path(policy_dir))
    env = SpecKnobsEnv(**env_kwargs)
    obs, _ = env.reset(options={"sim_seed": sim_seed})
    steps = max(1, round(float(cfg["horizon_s"]) / env.interval_s))
    todo = sorted(float(t) for t in cfg["at_s"])
    # before some labelled moments, hold a random candidate for explore_s: the policy's own past
    # knobs are features, and it must answer states its current self would not visit too
    rng = np.random.default_rng([sim_seed, 0xE4])
    runnable = [m for m, ok in enumerate(env.controller.valid) if ok]
    k_levels = [k_cap_level(k) for k in cfg["k_caps"]]
    detours = [np.array([rng.choice(runnable), cap_level(rng.choice(cfg["caps"])),
                         rng.choice(k_levels) if k_levels else k_cap_level(None), rng.integers(2) if cfg["hedge"] else 1])
               if rng.random() < float(cfg["explore"]) else None for _ in todo]
    window = max(float(cfg["explore_s"]), env.interval_s)
    out: list[Labelled] = []
    t = 0.0
    while todo:
        mask = env.action_masks()
        action = np.asarray(net(obs, mask), dtype=np.int64)
        detour = detours[len(detours) - len(todo)]
        if detour is not None and todo[0] - window <= t < todo[0]:
            action = detour if cfg["modes"] else np.array([action[0], *detour[1:]], dtype=np.int64)
        if t >= todo[0]:
            todo.pop(0)
            cands = candidate_actions(action, cfg["caps"], env.controller.valid, cfg["k_caps"], bool(cfg["hedge"]),
                                      bool(cfg["modes"]))
            values = np.empty(len(cands))
            for j, a in enumerate(cands):
                fork = copy.deepcopy(env)
                values[j] = rollout_value(fork, a, steps)
            # arrivals do not depend on the knobs: any fork counts them
            demand = (len(env.sim.requests) + fork.sim.metrics.arrived - env.sim.metrics.arrived) / env.reward_scale
            same = np.flatnonzero((cands == action).all(1))  # the policy's action is often a candidate
            cur = float(values[same[0]]) if len(same) else rollout_value(copy.deepcopy(env), action, steps)
            best = int(np.argmax(values))
            confirmed = math.nan
            if int(cfg["confirm"]) > 0 and _loss_share(values[best], cur) > float(cfg["min_gain"]):
                confirmed = confirm_gain(env, cands[best], action, steps, int(cfg["confirm"]), (sim_seed, round(t * 1000)))
            out.append(Labelled(obs.copy(), mask.copy(), action, cur, cands, values, sim_seed, t, confirmed, demand))
        obs, _, term, _, info = env.step(action)
        t = float(info["sim_time"])
        if term:
            break
    return out


def survey_episode(job: tuple[str, dict[str, Any], int, dict[str, Any]]) -> list[Labelled]:
    """Hold every mode that runs on the system of ``sim_seed`` for a whole episode (with the
    other knobs the policy in ``policy_dir`` sets at the start) and label the states each episode
    visits at ``cfg["at_s"]`` with all the modes' episode goodputs (one worker process's job).

    Every episode's states are labelled, not only those of the policy's own mode: it must also
    learn to stay in a system's best mode once there (the current mode is a feature)."""
    from controllers.policy import load_policy_dir
    from policy_env.knobs_env import SpecKnobsEnv

    policy_dir, env_kwargs, sim_seed, cfg = job
    _, net = load_policy_dir(Path(policy_dir))
    env = SpecKnobsEnv(**env_kwargs)
    obs, _ = env.reset(options={"sim_seed": sim_seed})
    base = np.asarray(net(obs, env.action_masks()), dtype=np.int64)
    cands = np.array([[m, *base[1:]] for m, ok in enumerate(env.controller.valid) if ok], dtype=np.int64)
    runs: list[list[tuple[np.ndarray, np.ndarray, float]]] = []
    values = np.empty(len(cands))
    for j, a in enumerate(cands):
        obs, _ = env.reset(options={"sim_seed": sim_seed})
        todo, states, total, t = sorted(float(x) for x in cfg["at_s"]), [], 0.0, 0.0
        while True:
            if todo and t >= todo[0]:
                todo.pop(0)
                states.append((obs.copy(), env.action_masks().copy(), t))
            obs, r, term, _, info = env.step(a)
            total += r
            t = float(info["sim_time"])
            if term:
                break
        runs.append(states)
        values[j] = total
    demand = env.sim.metrics.arrived / env.reward_scale  # the last episode's: arrivals do not depend on the mode
    return [Labelled(o, m, cands[j], float(values[j]), cands, values, sim_seed, t, demand=demand)
            for j, states in enumerate(runs) for o, m, t in states]


def confirm_gain(env: Any, best: np.ndarray, current: np.ndarray, steps: int, futures: int,
                 key: tuple[int, ...]) -> float:
    """Mean gain of ``best`` over ``current`` (a share of ``best``'s value) on ``futures``
    futures drawn independently of the one they were selected on (each shared by the two).

    Picking the best of ten candidates on one draw of the future favours the luckiest (the
    winner's curse); its value on other draws is an unbiased estimate of what it gains."""
    gains = []
    for j in range(futures):
        fork = copy.deepcopy(env)
        fork.sim.resample_future(int(np.random.SeedSequence([*key, j, 0xC0F]).generate_state(1)[0] >> 1))
        vb = rollout_value(copy.deepcopy(fork), best, steps)
        vc = rollout_value(fork, current, steps)
        gains.append((vb - vc) / max(abs(vb), 1e-9))
    return float(np.mean(gains))


def targets(data: Sequence[Labelled], min_gain: float, gain_per: str = "best") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per state: the action to fit (the best candidate, or the current action where no candidate
    beats it by ``min_gain`` of the best value, or of the demand with ``gain_per="demand"``, on
    the shared future and, where it was confirmed, on average over independent ones too), its
    weight (1 + that gain relative to the dataset's mean gain), and the best value (for the critic)."""
    actions, gains, best_v = [], [], []
    for d in data:
        i = int(np.argmax(d.values))
        gain = _gain(d, d.values[i], gain_per)
        take = gain > min_gain and not d.confirmed <= min_gain  # NaN: not confirmed
        gain = gain if math.isnan(d.confirmed) else min(gain, d.confirmed)
        actions.append(d.actions[i] if take else d.current)
        gains.append(gain if take else 0.0)
        best_v.append(max(d.values[i], d.current_value))
    g = np.asarray(gains)
    weights = 1.0 + g / (g.mean() if g.mean() > 0 else 1.0)
    return np.asarray(actions, dtype=np.int64), weights.astype(np.float32), np.asarray(best_v, dtype=np.float32)


def _gain(d: Labelled, best: float, gain_per: str) -> float:
    """What ``best`` gains over the current action, as a share of ``gain_per``."""
    if gain_per == "demand":
        if not d.demand > 0:
            raise ValueError("gain_per: demand needs states labelled with their demand (this release's rollouts)")
        return max(best - d.current_value, 0.0) / d.demand
    return _loss_share(best, d.current_value)


def _loss_share(best: float, current: float) -> float:
    """The share of the best candidate's value that the current action loses (0 when it is best)."""
    return max(best - current, 0.0) / max(abs(best), 1e-9)


def fit(model: Any, obs: np.ndarray, actions: np.ndarray, masks: np.ndarray, values: np.ndarray, weights: np.ndarray,
        epochs: int, learning_rate: float, confidence: float | None = None, desc: str = "fit",
        value_weights: np.ndarray | None = None) -> dict[str, float]:
    """Fit a MaskablePPO policy's actor to ``actions`` (weighted log-likelihood) and its critic
    to ``values`` (only where ``value_weights`` is nonzero, if given). With ``confidence``, the
    actor stops once the geometric-mean probability of the target per knob reaches it (a clone
    sure of everything leaves PPO nothing to explore)."""
    import torch

    from training.common import progress

    o = torch.as_tensor(np.asarray(obs, dtype=np.float32))
    a = torch.as_tensor(np.asarray(actions, dtype=np.int64))
    v_t = torch.as_tensor(np.asarray(values, dtype=np.float32))
    w = torch.as_tensor(np.asarray(weights, dtype=np.float32))
    vw = torch.ones_like(v_t) if value_weights is None else torch.as_tensor(np.asarray(value_weights, dtype=np.float32))
    m = np.asarray(masks, dtype=bool)
    policy = model.policy
    opt = torch.optim.Adam(policy.parameters(), lr=learning_rate)
    policy.set_training_mode(True)
    target = None if confidence is None else math.log(confidence) * a.shape[1]
    fitted = False
    nll = vloss = 0.0
    for _ in progress(iterable=range(int(epochs)), desc=desc, unit="epoch"):
        v, log_prob, _ = policy.evaluate_actions(o, a, action_masks=m)
        vl = (vw * (v.flatten() - v_t) ** 2).sum() / vw.sum()
        fitted = fitted or (target is not None and log_prob.mean().item() >= target)
        loss = (0.0 if fitted else -(w * log_prob).sum() / w.sum()) + 0.5 * vl
        opt.zero_grad()
        loss.backward()
        opt.step()
        nll, vloss = -log_prob.mean().item(), vl.item()
    policy.set_training_mode(False)
    pred = model.predict(o.numpy(), deterministic=True, action_masks=m)[0]
    return {"nll": nll, "value_mse": vloss, "agreement": float((pred == a.numpy()).all(1).mean()),
            "samples": float(len(o)), "confidence": float(math.exp(-nll / a.shape[1]))}


def training_set(data: Sequence[Labelled], actions: np.ndarray, weights: np.ndarray, values: np.ndarray,
                 anchors: tuple[np.ndarray, np.ndarray, np.ndarray] | None, anchor: float) -> tuple[np.ndarray, ...]:
    """What :func:`fit` sees: the labelled states with their :func:`targets`, plus the warm-start
    states (``anchors``: observations, actions, masks) at weight ``anchor`` each, whose critic
    targets are not fitted (they have no rollout value). Returns (obs, actions, masks, values,
    weights, value weights)."""
    obs, masks = np.stack([d.obs for d in data]), np.stack([d.mask for d in data])
    value_weights = np.ones(len(data), dtype=np.float32)
    if anchors is None or anchor <= 0:
        return obs, actions, masks, values, weights, value_weights
    a_obs, a_act, a_mask = anchors
    none = np.zeros(len(a_obs), dtype=np.float32)
    return (np.concatenate([obs, a_obs]), np.concatenate([actions, a_act]), np.concatenate([masks, a_mask]),
            np.concatenate([values, none]), np.concatenate([weights, np.full(len(a_obs), anchor, dtype=np.float32)]),
            np.concatenate([value_weights, none]))


def fit_committee(model: Any, data: Sequence[Labelled], arrays: tuple[np.ndarray, ...], cfg: dict[str, Any],
                  key: Sequence[int]) -> tuple[list[Any], dict[str, float]]:
    """``cfg["committee"]`` copies of ``model``'s policy (the warm start), each fitted to a
    bootstrap resample of the labelled systems (all of a system's states go in or out together,
    as often as it is drawn) plus every anchor state. Returns the member policies and how often
    the committee (see :class:`controllers.policy.CommitteeNet`) answers each labelled state's
    target and leaves the warm start there. ``key`` seeds the resampling."""
    from types import SimpleNamespace

    from controllers.policy import CommitteeNet, PolicyNet, actor_tensors

    obs, actions, masks, values, weights, value_weights = arrays
    n = len(data)
    systems = np.array([d.seed for d in data])
    names = np.unique(systems)
    rng = np.random.default_rng([*key, 0xC0])
    members = []
    for j in range(int(cfg["committee"])):
        drawn = rng.choice(names, size=len(names), replace=True)
        times = np.array([np.count_nonzero(drawn == s) for s in systems], dtype=np.float32)
        w = np.concatenate([weights[:n] * times, weights[n:]])
        keep = w > 0
        policy = copy.deepcopy(model.policy)
        fit(SimpleNamespace(policy=policy, predict=policy.predict), obs[keep], actions[keep], masks[keep], values[keep], w[keep],
            int(cfg["epochs"]), float(cfg["learning_rate"]), desc=f"rollouts: fit member {j + 1}/{cfg['committee']}",
            value_weights=value_weights[keep])
        members.append(policy)

    def net(policy: Any) -> PolicyNet:
        tensors, activation, layers = actor_tensors(policy)
        return PolicyNet.from_tensors(tensors, layers, activation, model.action_space.nvec, type(model).__name__ == "MaskablePPO")

    committee = CommitteeNet([net(p) for p in members], net(model.policy), float(cfg["agree"]))
    pred, warm = committee(obs[:n], masks[:n]), committee.fallback(obs[:n], masks[:n])
    return members, {"agreement": float((pred == actions[:n]).all(1).mean()), "samples": float(n),
                     "moved_share": float((pred != warm).any(1).mean())}


def improve(model: Any, policy_dir: Path, env_kwargs: dict[str, Any], cfg: dict[str, Any], seeds: Sequence[int],
            data: list[Labelled], workers: int, anchors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
            label: Callable[[tuple[str, dict[str, Any], int, dict[str, Any]]], list[Labelled]] = label_episode,
            desc: str = "rollouts: label states", key: Sequence[int] = (0,)) -> tuple[dict[str, float], list[Any]]:
    """One iteration: label the states the policy in ``policy_dir`` visits on the systems of
    ``seeds`` (with ``label``: :func:`label_episode`'s rollouts, or :func:`survey_episode`; ``desc``
    names the progress bar), add them to ``data``, and fit ``model`` to the aggregate, plus the
    ``anchors`` (warm-start observations, actions and masks) at weight ``cfg["anchor"]``.
    With ``cfg["committee"]``, ``model`` (the warm start) is left as it is and the committee's
    members are fitted instead (:func:`fit_committee`, resampled by ``key``).
    Returns statistics and the member policies (none without a committee)."""
    from training.compare import pool_map

    jobs = [(str(policy_dir), env_kwargs, int(s), cfg) for s in seeds]
    for labelled in pool_map(label, jobs, workers, desc=desc):
        data.extend(labelled)
    actions, weights, values = targets(data, float(cfg["min_gain"]), cfg["gain_per"])
    relabelled = float(np.mean([not np.array_equal(a, d.current) for a, d in zip(actions, data)]))
    gains = [_gain(d, d.values.max(), cfg["gain_per"]) for d in data]
    arrays = training_set(data, actions, weights, values, anchors, float(cfg["anchor"]))
    members: list[Any] = []
    if cfg["committee"]:
        members, stats = fit_committee(model, data, arrays, cfg, key)
    else:
        stats = fit(model, *arrays[:5], int(cfg["epochs"]), float(cfg["learning_rate"]), desc="rollouts: fit", value_weights=arrays[5])
    return {**{f"rollouts/{k}": v for k, v in stats.items()}, "rollouts/relabelled_share": relabelled,
            "rollouts/mean_gain": float(np.mean(gains)), "rollouts/states": float(len(data))}, members
