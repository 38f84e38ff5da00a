"""The Gymnasium environment over the real runtime: wall-clock, real models, real site processes.

:class:`RealSpecControlEnv` is ``policy_env.env.SpecControlEnv`` (same observation/action codec,
reward and masks) with each episode run by a :class:`runtime.real.runtime.RealRuntime` instead of
the simulator: the scenario's arrivals are replayed in real time against the tiny (or any
deployed) models, so a trained policy can be evaluated or fine-tuned on the real system. Slow,
but real. Drafter sites are started once, in ``__init__``, and reused by every episode.

    env = RealSpecControlEnv(load_deployment(scenario="tiny-local"), duration=5.0)
    obs, info = env.reset(seed=0)
"""

from __future__ import annotations

from typing import Any

from policy_env.env import SpecControlEnv
from runtime.real.deploy import Deployment, load_deployment
from runtime.real.replay import submit_workload, with_rate
from runtime.real.runtime import RealRuntime, SiteProcesses
from runtime.scenario import Scenario


class RealSpecControlEnv(SpecControlEnv):
    """``SpecControlEnv`` whose episodes run on the real runtime (see the module docstring)."""

    def __init__(self, deployment: Deployment | None = None, duration: float = 10.0, rate: float | None = None,
                 texts: list[str] | None = None, **kwargs: Any) -> None:
        dep = deployment or load_deployment()
        if rate is not None:
            dep.scenario = with_rate(dep.scenario, rate)
        super().__init__(scenario=dep.scenario, rate=None, duration=duration, make_runtime=self._start_episode, **kwargs)
        self.texts = texts
        self.processes = SiteProcesses()
        remote = [s.name for s in dep.scenario.sites if s.role != "target" and s.drafter and dep.address(s.name) is None]
        if remote:
            # (started once for every episode: an emulated load runs on from the first one)
            dep = dep.with_addresses(self.processes.launch({n: dep.drafter_for(n) for n in remote},
                                                           args={n: dep.site_args(n, 0) for n in remote}))
        self.deployment = dep
        self.sim: RealRuntime | None = None  # type: ignore[assignment]

    def _start_episode(self, scenario: Scenario, seed: int, duration: float, rate: float | None) -> RealRuntime:
        """The env's ``make_runtime`` hook: a fresh real runtime replaying this episode's arrivals."""
        if self.sim is not None:
            self.sim.close()
        rt = RealRuntime(self.deployment, seed=seed, launch_sites=False)
        rt.start()
        submit_workload(rt, duration, seed, self.texts)
        return rt

    def close(self) -> None:
        if self.sim is not None:
            self.sim.close()
            self.sim = None
        self.processes.stop()
