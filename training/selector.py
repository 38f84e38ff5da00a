"""Fit the learned selector (controllers/selector.py) on training systems of a distribution.

    python -m training.selector --distribution training/configs/scenario-mix.yaml --systems 240 --out selector.json
    python -m runtime simulate --controller selector:model=selector.json --scenario training/scenarios/apac-hybrid.yaml --rate 18
    python -m training.selector --check training/models/selector-mix.json --scenario training/scenarios/us-code-edge.yaml --rate 12 --seeds 8

1. **Data.** On ``--systems`` training systems drawn from the distribution (training seeds
   only), the selector runs once per setting of the portfolio (the lookahead's six, or
   ``--portfolio FILE``) for ``--duration`` seconds with common random numbers: it probes with
   the first setting (for ``--probe-s``, 10 s by default), then holds that setting. A
   setting's label is the goodput of that run, as a share of the best any setting reached
   there: the run a deployed selector choosing it would have had, probe and switch included
   (labels from whole runs of each setting, as before, overrated settings whose costs come
   late and did not account for the probe). The
   probe is the same in every run, and its features are what the model reads, computed by the
   code that computes them in deployment.
2. **Model.** A random forest (scikit-learn, 400 trees) predicting every setting's share from
   the probe features. Its leaf size and the switching margin are chosen by k-fold
   cross-validation over systems (each system's features predict its choice with a model that
   never saw it); the figures printed are those held-out folds' (mean share of each system's
   best, and goodput against always holding the first setting with a paired BCa CI; the folds
   also chose among 12 leaf-margin pairs, so the figures are slightly optimistic). On the
   earlier whole-run labels a ridge regression per setting gained 1.025x, the forest 1.035x.
3. **Fit and save**: on every system, the trees written as JSON for ``selector:model=FILE``
   (deploying needs numpy only).

``--data FILE.npz`` saves the data (with the probe length its labels were made with);
``--from-data FILE.npz`` refits from saved data without simulating. The held-out scenario
files and the test seeds are never drawn.

``--check MODEL`` fits nothing: on the test seeds of a scenario (or of a distribution's systems)
it runs the selector holding each of the model's settings after the probe, as the labels are
made, and prints beside each setting the share of the best the model predicted from the probe
and the share it reached: where a system lies outside what the model was fitted on, the two
part, and the model's choice with them (:func:`check`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: Trees in the forest: 400, since with 50 a refit's choices on unseen systems hung on the forest's seed
#: (docs/selector.md). Its leaf size and the switching margin are chosen by cross-validation from these.
TREES = 400
LEAVES = (3, 5, 10)
MARGINS = (0.0, 0.01, 0.02, 0.05)
#: How a data file's labels were made (saved with --data, checked by --from-data): each setting
#: held after the selector's probe. Older files labelled whole runs of each setting.
LABELS = "held-after-probe"


def _job(job: tuple[dict[str, Any], int, float, int, list[dict[str, Any]], list[str], float]) -> tuple[int, int, float, np.ndarray | None]:
    """The selector holding setting ``i`` after its probe, on one training system (a worker's
    job); the first setting's run also returns the probe features (the same in every run)."""
    from controllers.selector import Selector
    from policy_env.knobs_env import SpecKnobsEnv
    from runtime.sim import Simulator

    env_kwargs, seed, duration, i, settings, modes, probe_s = job
    scenario, rate = SpecKnobsEnv(**env_kwargs).draw(seed)
    ctl = Selector(settings=settings, modes=modes, hold=i, probe_s=probe_s)
    sim = Simulator(scenario, seed, duration, rate=rate)
    goodput = float(sim.run(ctl)["goodput_rps"])
    return seed, i, goodput, (ctl.probe_features() if i == 0 else None)


def fit_forest(x: np.ndarray, shares: np.ndarray, leaf: int, seed: int = 0) -> Any:
    """A random forest (sklearn) predicting every setting's share at once from the probe features.
    One thread: its trees are small, and on 2 cores two threads fitted the shipped labels slower."""
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=TREES, min_samples_leaf=leaf, random_state=seed, n_jobs=1).fit(x, shares)


def export_trees(forest: Any) -> list[dict[str, list]]:
    """A fitted forest's trees as plain lists (what :class:`controllers.selector.SelectorModel` reads)."""
    trees = []
    for est in forest.estimators_:
        t = est.tree_
        leaf = t.children_left == -1
        values = np.round(t.value[:, :, 0], 4).tolist()  # shares to 1e-4, at leaves only: the file stays small
        trees.append({"left": t.children_left.tolist(), "right": t.children_right.tolist(),
                      "feature": [max(int(f), 0) for f in t.feature], "threshold": np.round(t.threshold, 7).tolist(),
                      "value": [v if is_leaf else [] for v, is_leaf in zip(values, leaf)]})
    return trees


def fold_predictions(x: np.ndarray, shares: np.ndarray, leaf: int, folds: int = 5, seed: int = 0,
                     bar: Any = None) -> np.ndarray:
    """Each system's predicted shares from a forest fitted on the other folds (``bar``: a
    progress bar advanced once per fold)."""
    order = np.random.default_rng(seed).permutation(len(x))
    pred = np.zeros(shares.shape, dtype=float)
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        pred[test] = fit_forest(x[train], shares[train], leaf, seed).predict(x[test]).reshape(len(test), -1)
        if bar is not None:
            bar.update()
    return pred


def choices(pred: np.ndarray, margin: float) -> np.ndarray:
    """The setting each row's predicted shares choose: the best, if it beats the default
    (setting 0) by more than ``margin``, else the default."""
    best = pred.argmax(axis=1)
    return np.where(pred[np.arange(len(pred)), best] - pred[:, 0] > margin, best, 0)


def cross_validate(x: np.ndarray, shares: np.ndarray, leaf: int, margin: float, folds: int = 5,
                   seed: int = 0) -> np.ndarray:
    """The setting each system would get from a model fitted on the other folds."""
    return choices(fold_predictions(x, shares, leaf, folds, seed), margin)


@dataclass
class SelectorData:
    """The labelled training systems: every setting's goodput after the probe, and the probe's
    features. ``distribution`` is the fingerprint of the distribution they were drawn from
    (``ScenarioDistribution.fingerprint``; empty in files from before it was recorded)."""

    goodput: np.ndarray  # systems x settings
    features: np.ndarray  # systems x SELECTOR_FEATURES
    seeds: list[int]
    probe_s: float
    distribution: str = ""

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # hours of labels are not lost to a missing folder
        np.savez(path, goodput=self.goodput, features=self.features, seeds=np.array(self.seeds), labels=np.array(LABELS),
                 probe_s=np.array(self.probe_s), distribution=np.array(self.distribution))

    @classmethod
    def load(cls, path: str | Path) -> "SelectorData":
        """Read a file saved by :meth:`save`; files of an older kind of label are refused (ValueError)."""
        from controllers.selector import PROBE_S

        with np.load(path, allow_pickle=False) as d:
            if "labels" not in d.files or str(d["labels"]) != LABELS:
                raise ValueError(f"{path} labels each setting by a whole run of it (an older specctl), not by the "
                                 "run after the selector's probe; record the data again with --data")
            return cls(d["goodput"], d["features"], d["seeds"].tolist(),
                       float(d["probe_s"]) if "probe_s" in d.files else PROBE_S,  # (older files: the 10-s probe)
                       str(d["distribution"]) if "distribution" in d.files else "")


def record(env_kwargs: dict[str, Any], seeds: list[int], duration: float, settings: list[dict[str, Any]],
           modes: Sequence[str], probe_s: float, workers: int) -> SelectorData:
    """Run the selector holding each setting after its probe on every training system (a
    progress bar with an ETA): the labels and features :func:`fit` learns from."""
    from controllers.selector import SELECTOR_FEATURES
    from policy_env.knobs_env import SpecKnobsEnv
    from training.compare import pool_map

    jobs = [(env_kwargs, s, duration, i, settings, list(modes), probe_s) for s in seeds for i in range(len(settings))]
    goodput = np.zeros((len(seeds), len(settings)))
    x = np.zeros((len(seeds), len(SELECTOR_FEATURES)))
    row = {s: r for r, s in enumerate(seeds)}
    for seed, i, g, f in pool_map(_job, jobs, workers, desc="selector runs"):
        goodput[row[seed], i] = g
        if f is not None:
            x[row[seed]] = f
    dist = SpecKnobsEnv(**env_kwargs).distribution
    return SelectorData(goodput, x, list(seeds), probe_s, dist.fingerprint() if dist is not None else "")


@dataclass
class SelectorFit:
    """A fitted selector and what its held-out folds say about it."""

    model: Any  # controllers.selector.SelectorModel
    names: list[str]  # the settings as specs
    systems: int  # labelled systems it was fitted on
    folds: int
    leaf: int
    margin: float
    default_share: float  # mean share of each system's best, always holding the first setting
    share: float  # the same for the folds' choices
    ratio: tuple[float, float, float]  # folds' goodput against always the first setting: ratio, CI low, CI high
    chosen: list[float]  # share of systems the folds gave each setting

    def report(self) -> str:
        r, lo, hi = self.ratio
        return "\n".join([
            f"held-out folds ({self.folds}-fold over {self.systems} systems; {TREES} trees, leaves of >= "
            f"{self.leaf} systems and margin {self.margin:g} chosen there):",
            f"  mean share of each system's best: always {self.names[0]} {self.default_share:.3f}, the selector {self.share:.3f}",
            f"  goodput against always {self.names[0]}: {r:.3f}x [{lo:.3f}, {hi:.3f}]",
            "  chosen: " + ", ".join(f"{n} {c:.0%}" for n, c in zip(self.names, self.chosen) if c > 0)])


def fit(data: SelectorData, settings: list[dict[str, Any]], modes: Sequence[str], folds: int = 5, seed: int = 0) -> SelectorFit:
    """Choose the leaf size and switching margin by ``folds``-fold cross-validation over systems,
    then fit the forest on every system (see the module docstring). The margin only reads the
    predictions, so each leaf size's folds are fitted once (16 forests, not 66)."""
    from controllers.selector import SelectorModel
    from training.common import progress
    from training.compare import ratio_ci
    from training.mix_tune import shares_of_best, spec_of

    goodput, x = data.goodput, data.features
    if goodput.shape[1] != len(settings):
        raise ValueError(f"the data has {goodput.shape[1]} settings, the portfolio {len(settings)}")
    if len(x) < folds:
        raise ValueError(f"{len(x)} labelled systems cannot be split into {folds} folds; label more systems")
    shares = shares_of_best(goodput)
    rows = np.arange(len(x))
    scores, preds = {}, {}
    with progress(total=len(LEAVES) * folds + 1, desc=f"selector: fit forests ({folds} folds x {len(LEAVES)} leaf sizes, then all)",
                  unit="forest") as bar:
        for leaf in LEAVES:
            preds[leaf] = fold_predictions(x, shares, leaf, folds, seed, bar)
            for m in MARGINS:
                scores[leaf, m] = shares[rows, choices(preds[leaf], m)].mean()
        leaf, margin = max(scores, key=lambda k: (scores[k], k[1], k[0]))  # ties: switch less, larger leaves
        picks = choices(preds[leaf], margin)
        trees = export_trees(fit_forest(x, shares, leaf, seed))
        bar.update()
    model = SelectorModel(modes=list(modes), settings=[dict(s) for s in settings], trees=trees, margin=float(margin),
                          probe_s=data.probe_s)
    return SelectorFit(model, [spec_of(s, modes) for s in settings], len(x), folds, leaf, float(margin), float(shares[:, 0].mean()),
                       float(shares[rows, picks].mean()), ratio_ci(goodput[rows, picks], goodput[:, 0]),
                       [float(np.mean(picks == i)) for i in range(len(settings))])


def check(model: Any, data: SelectorData, names: Sequence[str]) -> str:
    """The model's predicted shares beside the shares ``data``'s runs reached (the same settings,
    test seeds), and what its choice and each seed's best setting reached."""
    from training.compare import ratio_ci
    from training.mix_tune import shares_of_best

    real = shares_of_best(data.goodput)
    pred = np.array([model.predict(x) for x in data.features])
    picks = np.array([model.choose(x) for x in data.features])
    rows = np.arange(len(picks))
    best = real.argmax(axis=1)
    width = max(len(n) for n in names)
    lines = [f"{'setting':<{width}}  predicted  reached  chosen  best", *(
        f"{n:<{width}}  {pred[:, i].mean():9.3f}  {real[:, i].mean():7.3f}  {np.sum(picks == i):6d}  {np.sum(best == i):4d}"
        for i, n in enumerate(names))]
    r, lo, hi = ratio_ci(data.goodput[rows, picks], data.goodput[:, 0])
    top_fixed = int(real.mean(axis=0).argmax())
    lines += [f"the model's choices reached {real[rows, picks].mean():.3f} of each seed's best: {r:.3f}x [{lo:.3f}, {hi:.3f}] "
              f"always {names[0]}; the best fixed setting here, {names[top_fixed]}, {real[:, top_fixed].mean():.3f}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from controllers.knobs import DEFAULT_MODES
    from controllers.lookahead import PORTFOLIO, load_portfolio
    from controllers.selector import PROBE_S, WARMUP_S
    from policy_env.knobs_env import SpecKnobsEnv
    from runtime.flags import OneLineParser
    from training.common import ConfigError

    p = OneLineParser(prog="python -m training.selector", description=__doc__.split("\n")[0])
    p.add_argument("--distribution", default="training/configs/scenario-mix.yaml", help="scenario distribution YAML")
    p.add_argument("--systems", type=int, default=240, help="training systems every setting runs on (240: ~20 min on 2 cores)")
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds per run (the probe included)")
    p.add_argument("--probe-s", type=float, help=f"seconds the selector probes before it holds a setting (default {PROBE_S:g}; "
                   f"averaging starts at {WARMUP_S:g} s)")
    p.add_argument("--portfolio", help="the settings to choose from (a `python -m training.portfolio` file; default: the lookahead's six)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds over systems")
    p.add_argument("--seed", type=int, default=0, help="which training systems are drawn")
    p.add_argument("--workers", type=int, default=2, help="processes")
    p.add_argument("--data", help="save the data here (.npz)")
    p.add_argument("--from-data", help="fit on data saved with --data instead of simulating")
    p.add_argument("--out", help="write the fitted model here (JSON, for selector:model=FILE)")
    p.add_argument("--check", metavar="MODEL", help="fit nothing: compare a fitted model's predicted shares with what each "
                   "setting reaches on the test seeds of --scenario (or of --distribution's systems)")
    p.add_argument("--scenario", help="with --check: a shipped scenario name or YAML path")
    p.add_argument("--rate", type=float, help="with --check --scenario: mean arrival rate (req/s; default: the scenario's)")
    p.add_argument("--seeds", type=int, default=8, help="with --check: test seeds (1e9, 1e9+1, ...)")
    a = p.parse_args(argv)
    if a.check:
        return _check_main(p, a)
    if a.scenario or a.rate is not None:
        p.error("--scenario and --rate go with --check; a fit draws its systems from --distribution")
    for flag, value in (("--systems", a.systems), ("--duration", a.duration), ("--workers", a.workers)):
        if value <= 0:
            p.error(f"{flag} must be > 0")
    if a.folds < 2:
        p.error("--folds must be >= 2")
    if a.probe_s is not None and a.probe_s <= WARMUP_S:
        p.error(f"--probe-s must exceed the {WARMUP_S:g} s the probe waits before averaging")
    probe_s = PROBE_S if a.probe_s is None else a.probe_s
    if a.duration <= probe_s:
        p.error(f"--duration must exceed the selector's {probe_s:g}-s probe")
    try:
        modes, settings = load_portfolio(a.portfolio) if a.portfolio else (DEFAULT_MODES, [dict(s) for s in PORTFOLIO])
        if a.from_data:
            data = SelectorData.load(a.from_data)
            if a.probe_s is not None and a.probe_s != data.probe_s:
                raise ValueError(f"{a.from_data} was recorded with a {data.probe_s:g}-s probe, not {a.probe_s:g}; drop "
                                 "--probe-s or record the data again")
            if data.goodput.shape[1] != len(settings):
                raise ValueError(f"{a.from_data} has {data.goodput.shape[1]} settings, the portfolio {len(settings)}; pass the "
                                 "--portfolio it was made with")
        else:
            env_kwargs = {"distribution": a.distribution, "duration": a.duration}
            SpecKnobsEnv(**env_kwargs)  # a bad distribution fails here, in one line
    except (ConfigError, ValueError, OSError, KeyError) as e:
        p.error(str(e))
    if not a.from_data:
        from training.mix_tune import tuning_seeds

        seeds = tuning_seeds(a.seed + 0x5E1, a.systems)
        print(f"{len(settings)} settings x {len(seeds)} training systems of {a.distribution}, {a.duration:g} s each",
              flush=True)
        data = record(env_kwargs, seeds, a.duration, settings, modes, probe_s, a.workers)
        if a.data:
            data.save(a.data)
            print(f"wrote {a.data}")
    try:
        result = fit(data, settings, modes, a.folds, a.seed)
    except ValueError as e:
        p.error(str(e))
    print(result.report())
    if a.out:
        result.model.save(a.out)
        print(f"wrote {a.out} (selector:model={a.out})")
    return 0


def _check_main(p: Any, a: Any) -> int:
    """``--check MODEL``: label the test seeds as :func:`record` labels training systems, then :func:`check`."""
    from controllers.selector import load_selector
    from policy_env.env import TRAIN_SEED_MAX
    from policy_env.knobs_env import SpecKnobsEnv
    from training.common import ConfigError
    from training.mix_tune import spec_of

    clash = [f for f, v in (("--from-data", a.from_data), ("--data", a.data), ("--out", a.out), ("--portfolio", a.portfolio),
                            ("--probe-s", a.probe_s)) if v]
    if clash:
        p.error(f"--check fits nothing and takes the settings and probe from the model; drop {', '.join(clash)}")
    if a.seeds < 2 or a.workers <= 0 or a.duration <= 0:
        p.error("--seeds must be >= 2, --workers and --duration > 0")
    if a.rate is not None and (a.rate <= 0 or not a.scenario):
        p.error("--rate must be > 0 and goes with --scenario")
    try:
        model = load_selector(a.check)
        env_kwargs = ({"scenario": a.scenario, "rate": a.rate} if a.scenario else {"distribution": a.distribution}) \
            | {"duration": a.duration}
        SpecKnobsEnv(**env_kwargs)  # a bad scenario or distribution fails here, in one line
    except (ConfigError, ValueError, OSError, KeyError) as e:
        p.error(str(e))
    if a.duration <= model.probe_s:
        p.error(f"--duration must exceed the model's {model.probe_s:g}-s probe")
    where = a.scenario or a.distribution
    print(f"{len(model.settings)} settings x {a.seeds} test seeds of {where}, {a.duration:g} s each", flush=True)
    data = record(env_kwargs, [TRAIN_SEED_MAX + i for i in range(a.seeds)], a.duration, model.settings, model.modes,
                  model.probe_s, a.workers)
    print(check(model, data, [spec_of(s, model.modes) for s in model.settings]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
