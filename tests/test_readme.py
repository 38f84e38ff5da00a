"""Every ``python`` command in the README parses, and every input file it names exists.

The README's examples are what users paste. A renamed flag, a removed module or a deleted config
breaks them silently, since nothing else runs them. This runs each command's own argument parser
(not its work: parsing stops it) and checks the repository paths it reads.
"""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Flags whose value is written, not read: it need not exist yet.
OUTPUT_FLAGS = {"--out", "--markdown", "--export", "--save", "--output", "--json-out", "--data-out"}
INPUT_SUFFIXES = (".yaml", ".yml", ".json", ".npz", ".csv")


def readme_commands() -> list[str]:
    """The README's ``python`` command lines, continuations joined."""
    code: list[str] = []
    fenced = False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            code.append(line)
    out: list[str] = []
    for line in "\n".join(code).replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("python ") and not line.startswith(("python -m venv", "python -m pip")):
            out.append(line)
    return out


class Parsed(Exception):
    """Raised once a command's flags have parsed: the test stops there."""


def words(command: str) -> list[str]:
    """The command's arguments after ``python``, up to the first shell operator or comment."""
    tokens = []
    for tok in shlex.split(command, comments=True):
        if tok in {"|", "||", "&&", ";", ">", ">>", "&", "2>&1"}:
            break
        tokens.append(tok)
    return tokens[1:]


def input_paths(args: list[str]) -> list[str]:
    """Repository paths the command reads: plain arguments, and ``key=PATH`` inside specs."""
    found = []
    for prev, tok in zip(["", *args], args):
        if prev in OUTPUT_FLAGS or tok.startswith("-") or "<" in tok or "$" in tok:
            continue
        for part in re.split(r"[,=]", tok):
            part = part.rsplit(":", 1)[-1]  # a spec's `name:` prefix; a URI (runs:/…, s3://…) keeps a leading "/"
            if "/" in part and part.endswith(INPUT_SUFFIXES) and not part.startswith("/"):
                found.append(part)
    return found


COMMANDS = readme_commands()


def test_the_readme_has_its_commands():
    assert len(COMMANDS) > 50  # the parse below found them (a change of fences would hide them all)
    assert any(c.startswith("python training/train.py") for c in COMMANDS)


@pytest.mark.filterwarnings("ignore:.*found in sys.modules after import of package:RuntimeWarning")  # runpy, on a module the suite imported already
@pytest.mark.parametrize("command", COMMANDS, ids=[c[:80] for c in COMMANDS])
def test_a_readme_command_parses_and_its_inputs_exist(command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    args = words(command)
    missing = [p for p in input_paths(args) if not (REPO / p).exists()]
    assert not missing, f"{command!r} reads {missing}, which the repository does not have"
    original = argparse.ArgumentParser.parse_args

    def parse_only(self: argparse.ArgumentParser, args: list[str] | None = None, namespace: object = None) -> argparse.Namespace:
        original(self, args, namespace)  # a bad flag exits here with its message
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    monkeypatch.chdir(REPO)
    if args[0] == "-m":
        monkeypatch.setattr(sys, "argv", [args[1], *args[2:]])
        run = lambda: runpy.run_module(args[1], run_name="__main__", alter_sys=False)  # noqa: E731
    else:
        assert (REPO / args[0]).is_file(), f"{command!r}: no script {args[0]}"
        monkeypatch.setattr(sys, "argv", args)
        monkeypatch.syspath_prepend(str((REPO / args[0]).parent))
        run = lambda: runpy.run_path(str(REPO / args[0]), run_name="__main__")  # noqa: E731
    try:
        run()
    except Parsed:
        return
    except SystemExit as e:
        err = capsys.readouterr().err.strip()
        if re.search(r"<[a-z_ -]+>", err) and any(re.search(r"<[a-z_ -]+>", a) for a in args):
            return  # only a placeholder the reader fills in (e.g. policy:checkpoints/<run>/best) was refused
        pytest.fail(f"{command!r} did not parse (exit {e.code}): {err}")
    pytest.fail(f"{command!r} finished without parsing any flags: is it still a command-line program?")
