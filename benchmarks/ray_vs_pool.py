"""The same evaluation grid on the local process pool and on a local Ray instance, in one run.

Times both (the pool including its process start-up; Ray's start-up timed apart, since a
cluster is started once) and checks that the rows are identical. On one machine expect
parity: Ray is there for the cluster, not to beat a pool on 2 cores.

    python benchmarks/ray_vs_pool.py                        # 2 scenarios x 3 controllers x 4 seeds x 30 s
    python benchmarks/ray_vs_pool.py --seeds 0 1 --duration 10 --cpus 2
"""

from __future__ import annotations

import argparse
import time

from training.backend import Backend, connect
from training.evaluate import Job, execute


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenarios", nargs="+", default=["wan-4region", "colocated"])
    p.add_argument("--controllers", nargs="+", default=["static", "centralized", "wisp"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--cpus", type=int, default=2, help="pool workers = Ray's num_cpus (default: 2)")
    args = p.parse_args()
    jobs = [Job("run", sc, c, s, args.duration, None) for sc in args.scenarios for c in args.controllers for s in args.seeds]

    t0 = time.perf_counter()
    with Backend(workers=args.cpus) as pool:
        pooled = pool.map(execute, jobs, desc="pool", progress=False)
    pool_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ray = connect("local", num_cpus=args.cpus)
    start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rayed = Backend(ray="").map(execute, jobs, desc="ray", progress=False)
    ray_s = time.perf_counter() - t0
    ray.shutdown()

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]

    sim_s = sum(r["wall_s"] for r in pooled)
    print(f"{len(jobs)} jobs ({len(args.scenarios)} scenarios x {len(args.controllers)} controllers x {len(args.seeds)} seeds "
          f"x {args.duration:g} simulated s), {args.cpus} CPUs; {sim_s:.1f} s of simulation in all")
    print(f"  pool ({args.cpus} spawned processes, start-up included): {pool_s:6.1f} s")
    print(f"  Ray  ({args.cpus} CPUs, local instance):                  {ray_s:6.1f} s  (+ {start_s:.1f} s to start Ray)")
    print(f"  rows identical: {strip(pooled) == strip(rayed)}")


if __name__ == "__main__":
    main()
