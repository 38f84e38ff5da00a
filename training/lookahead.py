"""Judge model-predictive knob selection (``lookahead``) against a baseline and the default setting.

    python -m training.lookahead --scenario training/scenarios/apac-hybrid.yaml --rate 18 \\
        --baseline "knobs:mode=1,cap=2.5,k_cap=3,hedge=false"

The ``lookahead`` controller (:mod:`controllers.lookahead`) works as follows:
- it plans at the first decision point and every ``--replan`` seconds after it;
- each plan simulates every portfolio setting ``--horizon`` seconds ahead, on ``--futures``
  resampled futures shared by all of them;
- it holds the best until the next plan.

It is a planner that needs a simulator of the system it runs on, so it runs in the simulator
only, like the oracle. This command runs three rows on the final comparison's test seeds (1e9,
1e9+1, ...):
- the baseline;
- the default knob policy's setting (the portfolio's first);
- the lookahead.

It prints their goodput ratios with paired bootstrap CIs, and the settings the lookahead held.
``--portfolio FILE`` plans over a learned portfolio (``python -m training.portfolio``),
``--include SPEC`` adds a whole controller (e.g. the baseline itself) to it, and
``--unknown-acceptance`` plans on forks that forget each request's own acceptance rate.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Sequence

from controllers.knobs import DEFAULT_MODES
from controllers.lookahead import PORTFOLIO, Lookahead
from policy_env.env import TRAIN_SEED_MAX


def main(argv: Sequence[str] | None = None) -> int:
    from controllers import ControllerError, make_controller
    from runtime.flags import OneLineParser
    from runtime.scenario import ScenarioError, load_scenario
    from training.compare import evaluate_controllers, ratio_ci
    from training.knobs import settings_line
    from training.mix_tune import spec_of

    defaults = Lookahead()
    p = OneLineParser(prog="python -m training.lookahead", description=__doc__.split("\n")[0])
    p.add_argument("--scenario", required=True, help="shipped scenario name or YAML path")
    p.add_argument("--rate", type=float, help="mean arrival rate (req/s; default: the scenario's)")
    p.add_argument("--baseline", required=True, help="controller spec to judge against (e.g. the best tuned heuristic)")
    p.add_argument("--seeds", type=int, default=6, help="test seeds (1e9, 1e9+1, ...; the final comparison's)")
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds of arrivals per run")
    p.add_argument("--horizon", type=float, default=defaults.horizon_s, help="seconds each setting is simulated per plan")
    p.add_argument("--replan", type=float, default=defaults.replan_s, help="seconds between plans")
    p.add_argument("--futures", type=int, default=defaults.futures, help="resampled futures per plan")
    p.add_argument("--portfolio", help="a portfolio file (`python -m training.portfolio --out FILE`; default: the shipped six settings)")
    p.add_argument("--unknown-acceptance", action="store_true",
                   help="plan on forks that forget each request's own acceptance rate (what a deployment could know)")
    p.add_argument("--include", action="append", default=[], metavar="SPEC",
                   help="a controller spec the planner may also hold, as it is (repeatable; e.g. the baseline itself)")
    p.add_argument("--workers", type=int, default=2, help="processes")
    a = p.parse_args(argv)
    if a.seeds < 2:
        p.error("--seeds must be >= 2 (a confidence interval needs two)")
    for flag, value in (("--duration", a.duration), ("--horizon", a.horizon), ("--replan", a.replan),
                        ("--futures", a.futures), ("--workers", a.workers)):
        if value <= 0:
            p.error(f"{flag} must be > 0")
    try:
        scenario = load_scenario(a.scenario)
    except ScenarioError as e:
        p.error(str(e))
    for flag, spec in [("--baseline", a.baseline), *(("--include", s) for s in a.include)]:
        try:
            make_controller(spec)
        except (ControllerError, ValueError) as e:
            p.error(f"{flag} {spec!r}: {e}")
    ahead = f"lookahead:horizon_s={a.horizon:g},replan_s={a.replan:g},futures={a.futures}"
    if a.portfolio:
        ahead += f",portfolio={a.portfolio}"
    if a.unknown_acceptance:
        ahead += ",known_acceptance=false"
    if a.include:
        ahead += " including " + " and ".join(a.include)
    default = spec_of(PORTFOLIO[0], DEFAULT_MODES)
    planner = partial(Lookahead, horizon_s=a.horizon, replan_s=a.replan, futures=a.futures, include=tuple(a.include),
                      known_acceptance=not a.unknown_acceptance, **({"portfolio": a.portfolio} if a.portfolio else {}))
    try:
        planner()
    except ValueError as e:
        p.error(str(e))
    rows = {"baseline": a.baseline, "default": default, "lookahead": planner}
    seeds = [TRAIN_SEED_MAX + i for i in range(a.seeds)]
    cmp = evaluate_controllers(scenario, rows, seeds, a.duration, a.rate, a.workers, desc="runs")
    base, fixed, planned = cmp.values("baseline"), cmp.values("default"), cmp.values("lookahead")

    def show(x, y) -> str:
        r, lo, hi = ratio_ci(x, y)
        return f"{r:.3f}x [{lo:.3f}, {hi:.3f}]"

    print(f"{a.scenario} at {a.rate or 'its'} req/s, {len(seeds)} test seeds x {a.duration:g} s:")
    print(f"  baseline {a.baseline}: {base.mean():.3f} req/s")
    print(f"  default setting {default}: {fixed.mean():.3f} req/s, {show(fixed, base)} the baseline")
    print(f"  {ahead}: {planned.mean():.3f} req/s, {show(planned, base)} the baseline, {show(planned, fixed)} the default setting")
    print(f"  settings it held (share of control intervals): {settings_line(cmp.knob_shares('lookahead'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
