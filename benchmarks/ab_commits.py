"""Speed of this checkout against another commit, on the same simulations, and whether they agree.

A speed-up of the simulator or a controller must not change a simulated result. The golden test
(``tests/test_sim_golden.py``) checks that on 8-s runs; this checks it on whole runs, and times
them. Each case runs ``python -m runtime simulate ... --json`` in this checkout and in a
temporary worktree of ``--rev``, alternately (so a busy machine slows both alike), and prints
the median wall time of each, their ratio, and whether every metric but the wall time matched.

    python benchmarks/ab_commits.py --rev HEAD~3                       # the default cases, 3 repeats
    python benchmarks/ab_commits.py --rev main --repeats 5 --case "edge-fleet@32=wisp"
    python benchmarks/ab_commits.py --rev v1 --case "training/scenarios/apac-hybrid.yaml@18=twin:replan=0,stress=0"

A case is ``SCENARIO[@RATE]=CONTROLLER``. Exits 1 if any case's metrics differ, 2 if a run fails
(e.g. a controller or file the other commit does not have), naming the case and its error.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: What the planners and the final comparison spend their time in: the twin's plan, the
#: selector's forest and wisp's per-site planning, wanspec, and centralized drafting.
CASES = [
    "wan-4region@23=twin:replan=0,stress=0,background=false",
    "training/scenarios/apac-hybrid.yaml@18=twin:background=false",
    "wan-4region@23=selector:model=training/models/selector-mix.json",
    "edge-fleet@32=wisp",
    "edge-fleet@32=wanspec",
    "wan-4region@23=centralized",
]


def parse_case(case: str) -> tuple[str, str | None, str]:
    """``SCENARIO[@RATE]=CONTROLLER`` as (scenario, rate or None, controller)."""
    where, sep, controller = case.partition("=")
    scenario, _, rate = where.partition("@")
    if not sep or not scenario or not controller:
        raise ValueError(f"case {case!r}: expected SCENARIO[@RATE]=CONTROLLER, e.g. edge-fleet@32=wisp")
    if rate:  # a bad rate fails here, not in the 10th subprocess
        try:
            float(rate)
        except ValueError:
            raise ValueError(f"case {case!r}: rate {rate!r} is not a number (req/s), e.g. edge-fleet@32=wisp") from None
    return scenario, rate or None, controller


def simulate(checkout: Path, case: str, duration: float, seed: int) -> dict:
    """One run's metrics, by the ``checkout``'s own code."""
    scenario, rate, controller = parse_case(case)
    cmd = [sys.executable, "-m", "runtime", "simulate", "--scenario", scenario, "--controller", controller,
           "--duration", str(duration), "--seed", str(seed), "--json"] + (["--rate", rate] if rate else [])
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"case {case!r} failed in {checkout}: {last}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rev", required=True, help="the commit to compare with (anything git rev-parse takes)")
    p.add_argument("--case", action="append", help="SCENARIO[@RATE]=CONTROLLER (repeatable; default: CASES)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=1_000_000_001)
    a = p.parse_args(argv)
    cases = a.case or CASES
    try:
        for c in cases:
            parse_case(c)
    except ValueError as e:
        p.error(str(e))
    if a.repeats < 1:
        p.error("--repeats must be >= 1")
    rev = subprocess.run(["git", "rev-parse", "--short", a.rev], cwd=REPO, capture_output=True, text=True)
    if rev.returncode != 0:
        p.error(f"--rev {a.rev!r} is not a commit of {REPO}: {rev.stderr.strip()}")
    differ = 0
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), a.rev], cwd=REPO, check=True)
        try:
            print(f"{'case':<70} {rev.stdout.strip():>9} {'this':>9} {'ratio':>7}  metrics")
            for case in cases:
                walls: dict[str, list[float]] = {"base": [], "this": []}
                same = True
                for i in range(a.repeats):
                    order = [("base", base), ("this", REPO)]
                    got = {}
                    for name, checkout in (order if i % 2 == 0 else order[::-1]):
                        try:
                            got[name] = simulate(checkout, case, a.duration, a.seed)
                        except RuntimeError as e:
                            print(f"error: {e}", file=sys.stderr)
                            return 2
                        walls[name].append(got[name].pop("wall_s"))
                    same &= got["base"] == got["this"]
                b, t = statistics.median(walls["base"]), statistics.median(walls["this"])
                differ += not same
                print(f"{case:<70} {b:>8.1f}s {t:>8.1f}s {t / b:>6.3f}x  {'identical' if same else 'DIFFER'}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, check=False)
    print(f"(median wall seconds of {a.repeats} alternating runs each, {a.duration:g} s simulated, seed {a.seed}; "
          "ratio: this checkout / the other)")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
