"""argparse helpers every command line of the project shares.

A leaf module (it imports nothing of the project), so any CLI, including the real backend's
``python -m runtime.real.models``, can use it without importing ``runtime.cli`` and what that
registers.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, NoReturn


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad flags in one line instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def positive(what: str) -> Callable[[str], float]:
    """argparse type for a finite number > 0; ``what`` names it in the error (with its unit)."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not v > 0 or math.isinf(v):
            raise argparse.ArgumentTypeError(f"must be a positive {what}, got {text}")
        return v

    parse.__name__ = what  # argparse names the type in "invalid <type> value" messages
    return parse


positive_float = positive("number of seconds")


def whole(what: str) -> Callable[[str], int]:
    """argparse type for a whole number >= 1 (a count); ``what`` names it in the error."""

    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"must be a whole {what} >= 1, got {text}")
        return int(text)

    parse.__name__ = what
    return parse


def add_system_flags(p: argparse.ArgumentParser, default_dist: str, first_seed: int, seed_help: str = "") -> None:
    """The diagnoses' choice of systems: ``--distribution`` (default ``default_dist``) or
    ``--scenario`` with ``--rate``, and ``--systems`` seeds from ``--first-seed``."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--distribution", help=f"scenario distribution YAML (default: {default_dist})")
    where.add_argument("--scenario", help="a shipped scenario name or YAML path instead (each seed: a workload of it)")
    p.add_argument("--rate", type=positive("arrival rate in req/s"), help="with --scenario: its arrival rate (default: the scenario's)")
    p.add_argument("--systems", type=whole("number of systems"), default=8, help="systems (seeds --first-seed, ...)")
    p.add_argument("--first-seed", type=int, default=first_seed, help=seed_help or None)
