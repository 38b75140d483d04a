"""The commands the docs show run as written: every `python jobs/X.py ...` line in a code block of
README.md, docs/*.md or infra/README.md names a job that exists, only flags its --help lists, every option the job
requires, and config files that exist.

Each job's `--help` runs once, in this process (runpy, as `python jobs/X.py --help` runs it), so
the imports are paid once: seconds.
"""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import shlex
import sys
from functools import cache

import pytest

from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "infra" / "README.md"]


def code_lines(text: str) -> list[str]:
    """Lines of fenced (```) and indented (4 spaces, after a blank line or another such line) code blocks."""
    out, fenced, indented, prev_blank = [], False, False, True
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            out.append(line.strip())
            continue
        indented = line.startswith("    ") and (prev_blank or indented) and bool(line.strip())
        if indented:
            out.append(line.strip())
        prev_blank = not line.strip()
    return out


def doc_commands() -> list[tuple[str, str]]:
    """(doc name, command) for every `python jobs/...` command; backslash continuations joined."""
    found = []
    for doc in DOCS:
        lines = code_lines(doc.read_text())
        i = 0
        while i < len(lines):
            line = lines[i]
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1] + " " + lines[i]
            for start in [m.start() for m in re.finditer(r"(?<![\w/])python jobs/", line)]:
                found.append((doc.relative_to(ROOT).as_posix(), line[start:]))
            i += 1
    return found


def words(command: str) -> list[str]:
    """The command's words up to its end (a shell comment, `&&`, `;` or `|`)."""
    out = []
    for w in shlex.split(command, comments=True):
        if w in ("&&", ";", "|", "||"):
            break
        out.append(w)
    return out


@cache
def job_help(script: str) -> str:
    """What `python jobs/SCRIPT --help` prints (exit status 0 checked)."""
    path = ROOT / "jobs" / script
    out, argv = io.StringIO(), sys.argv
    sys.argv = [str(path), "--help"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
            runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = argv
    assert stop.value.code in (0, None), f"python jobs/{script} --help exited {stop.value.code}"
    return out.getvalue()


def required_options(help_text: str) -> set[str]:
    """Options the usage line shows outside brackets."""
    usage = help_text.split("\n\n")[0]
    while True:
        shorter = re.sub(r"\[[^\[\]]*\]", "", usage)
        if shorter == usage:
            break
        usage = shorter
    return set(re.findall(r"(?<![\w-])--[\w-]+", usage))


COMMANDS = doc_commands()


def test_docs_show_job_commands():
    docs = {doc for doc, _ in COMMANDS}
    assert "README.md" in docs and len(docs) >= 5, docs
    assert any(c.startswith("python jobs/sweep.py") for _, c in COMMANDS if _ == "README.md")


@pytest.mark.parametrize("script", sorted({words(c)[1].removeprefix("jobs/") for _, c in COMMANDS}))
def test_every_documented_command_runs_as_written(script):
    mine = [(doc, c) for doc, c in COMMANDS if words(c)[1] == f"jobs/{script}"]
    assert (ROOT / "jobs" / script).is_file(), f"{mine[0][0]} runs jobs/{script}, which does not exist"
    text = job_help(script)
    known = set(re.findall(r"(?<![\w-])--[\w-]+", text.split("\noptions:", 1)[-1]))  # the parser's, not the prose's
    for doc, command in mine:
        argv = words(command)[2:]
        flags = {w.split("=", 1)[0] for w in argv if w.startswith("--")}
        assert flags <= known, f"{doc}: `{command}` uses {sorted(flags - known)}, not in jobs/{script} --help"
        missing = required_options(text) - flags
        assert not missing, f"{doc}: `{command}` lacks the required {sorted(missing)}"
        for w in argv:
            if re.fullmatch(r"jobs/configs/[\w./-]+\.yaml", w):
                assert (ROOT / w).is_file(), f"{doc}: `{command}` names {w}, which does not exist"
