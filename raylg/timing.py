"""Where a run's fixed cost goes: named marks on the wall clock, written beside the run.

A trial's start is spread over processes (Tune's trial actor, Ray Train's controller and
worker), so marks are wall-clock times (`time.time()`), comparable across processes on one
node. `fit` marks its stages and writes `timing.json` into the run directory; launchers add
their own marks before it (`mark("loop_start")`). jobs/bench_sweep.py prints the breakdown.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

_marks: list[tuple[str, float]] = []


def reset(**earlier: float) -> None:
    """Start a new run's marks (a reused process keeps none of the last run's); `earlier` adds
    marks taken before this call (e.g. the process's start)."""
    _marks.clear()
    _marks.extend(sorted(earlier.items(), key=lambda kv: kv[1]))


def mark(name: str, at: float | None = None) -> None:
    _marks.append((name, time.time() if at is None else at))


def marks() -> list[tuple[str, float]]:
    return list(_marks)


def write(path: str | Path, marks_: list[tuple[str, float]] | None = None) -> None:
    """The marks (this process's by default) as timing.json, written whole or not at all."""
    from raylg.files import write_text_atomic

    rows = _marks if marks_ is None else marks_
    write_text_atomic(path, json.dumps([{"mark": n, "t": t} for n, t in rows], indent=1))


def append(path: str | Path, name: str) -> None:
    """Add a mark taken in another process (e.g. the trial's end, after its Train run) to a
    written timing.json."""
    write(path, [*read(path), (name, time.time())])


def read(path: str | Path) -> list[tuple[str, float]]:
    return [(m["mark"], m["t"]) for m in json.loads(Path(path).read_text())]


def steps(marks_: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """(mark, seconds since the previous mark) for each mark after the first."""
    return [(n, t - marks_[i][1]) for i, (n, t) in enumerate(marks_[1:])]
