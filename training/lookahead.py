"""Judge model-predictive knob selection (``lookahead``) against a baseline and the default setting.

    python -m training.lookahead --scenario training/scenarios/apac-hybrid.yaml --rate 18 \\
        --baseline "knobs:mode=1,cap=2.5,k_cap=3,hedge=false"

The ``lookahead`` controller (:mod:`controllers.lookahead`) works as follows:
- it plans at the first decision point and every ``--replan`` seconds after it;
- each plan simulates every portfolio setting ``--horizon`` seconds ahead, on ``--futures``
  resampled futures shared by all of them;
- it holds the best until the next plan.

It is a planner that needs a simulator of the system it runs on, so it runs in the simulator
only, like the oracle. This command is :mod:`training.judge` with the planner's flags: the
baseline, the default knob policy's setting (the portfolio's first) and the lookahead on the
final comparison's test seeds, their goodput ratios with paired bootstrap CIs, and the settings
the lookahead held.
``--portfolio FILE`` plans over a learned portfolio (``python -m training.portfolio``),
``--include SPEC`` adds a whole controller (e.g. the baseline itself) to it, and
``--unknown-acceptance`` plans on forks that forget each request's own acceptance rate.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Sequence

from controllers.lookahead import Lookahead


def main(argv: Sequence[str] | None = None) -> int:
    from runtime.flags import OneLineParser
    from training.judge import add_judge_args, checked_scenario, judge

    defaults = Lookahead()
    p = OneLineParser(prog="python -m training.lookahead", description=__doc__.split("\n")[0])
    add_judge_args(p)
    p.add_argument("--horizon", type=float, default=defaults.horizon_s, help="seconds each setting is simulated per plan")
    p.add_argument("--replan", type=float, default=defaults.replan_s, help="seconds between plans")
    p.add_argument("--futures", type=int, default=defaults.futures, help="resampled futures per plan")
    p.add_argument("--portfolio", help="a portfolio file (`python -m training.portfolio --out FILE`; default: the shipped six settings)")
    p.add_argument("--unknown-acceptance", action="store_true",
                   help="plan on forks that forget each request's own acceptance rate (what a deployment could know)")
    p.add_argument("--include", action="append", default=[], metavar="SPEC",
                   help="a controller spec the planner may also hold, as it is (repeatable; e.g. the baseline itself)")
    a = p.parse_args(argv)
    for flag, value in (("--horizon", a.horizon), ("--replan", a.replan), ("--futures", a.futures)):
        if value <= 0:
            p.error(f"{flag} must be > 0")
    scenario = checked_scenario(p, a, [("--include", s) for s in a.include])
    ahead = f"lookahead:horizon_s={a.horizon:g},replan_s={a.replan:g},futures={a.futures}"
    if a.portfolio:
        ahead += f",portfolio={a.portfolio}"
    if a.unknown_acceptance:
        ahead += ",known_acceptance=false"
    if a.include:
        ahead += " including " + " and ".join(a.include)
    planner = partial(Lookahead, horizon_s=a.horizon, replan_s=a.replan, futures=a.futures, include=tuple(a.include),
                      known_acceptance=not a.unknown_acceptance, **({"portfolio": a.portfolio} if a.portfolio else {}))
    try:
        planner()
    except ValueError as e:
        p.error(str(e))
    judge(a, scenario, ahead, planner)
    return 0


if __name__ == "__main__":
    sys.exit(main())
