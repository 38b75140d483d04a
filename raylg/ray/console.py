"""What a sweep prints: one line per event, and Ray's, Tune's and MLflow's routine logging in a file.

A teacher or trial that starts gets one line, a trial one line per epoch (every k-th epoch when a
trial has more than MAX_EPOCH_LINES, and its last), and one when it ends (finished, stopped early
at epoch k, or failed with the first line of its error). Everything
the libraries log on the driver (checkpoint paths, snapshot warnings, local-mode notices) goes
to SWEEP_DIR/driver.log; what trials and teachers print stays in Ray's own log directory (the
sweep prints where). The closing tables are printed by the caller.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

from ray import tune

from raylg.ray.spec import ARM, SEED, Sweep

LIBRARIES = ("ray", "mlflow", "alembic", "urllib3", "filelock", "py.warnings")
MAX_EPOCH_LINES = 10  # per trial; metrics.jsonl and MLflow keep every epoch


def route_library_logs(path: Path) -> None:
    """Send the libraries' driver-side logging to `path` instead of the console (once per file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, logging.FileHandler) and h.baseFilename == str(path.resolve()):
                return
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                logger.removeHandler(h)
        logger.addHandler(handler)
        logger.propagate = False
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
    # Tune warns after each epoch that snapshotting "may become a bottleneck" on a small sweep
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "600")
    # Tune's newer console output prints its own start block (results path, TensorBoard hint)
    # whatever the verbosity; the classic reporter at verbose=0 prints nothing
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def describe(sweep: Sweep, config: dict[str, Any]) -> str:
    """What tells a trial apart, in the sweep's own terms: arm, seed, swept values."""
    parts = [str(config[ARM])] if ARM in config else []
    if SEED in config:
        parts.append(f"seed {config[SEED]}")
    parts += [f"{k.rsplit('.', 1)[-1]} {config[k]:g}" if isinstance(config.get(k), float)
              else f"{k.rsplit('.', 1)[-1]} {config.get(k)}" for k in sweep.swept]
    return ", ".join(parts)


def plan(sweep: Sweep) -> str:
    """How many trials and why, e.g. "4 trials (2 arms x 2 seeds)"."""
    s = sweep.spec
    axes = [(len(s.arms), "arms")] if s.arms else []
    axes += [(len(s.seeds), "seeds")] if s.seeds else []
    axes += [(len(v["grid"]), k.split(".", 1)[-1] if k.count(".") > 1 else k) for k, v in s.space.items() if "grid" in v]
    axes += [(s.num_samples, "samples")] if s.num_samples > 1 else []
    total = math.prod(n for n, _ in axes)
    words = [f"{n} {what[:-1] if n == 1 and what in ('arms', 'seeds', 'samples') else what}" for n, what in axes]
    return f"{total} trial{'s' if total != 1 else ''}" + (f" ({' x '.join(words)})" if words else "")


def _short(trial) -> str:
    return trial.trial_id


class Console(tune.Callback):
    """Tune callback: the per-trial lines."""

    def __init__(self, sweep: Sweep, log: Callable[[str], None] = print):
        self.sweep, self.log = sweep, log
        self.last: dict[str, dict] = {}
        self.every = max(1, math.ceil(sweep.max_t / MAX_EPOCH_LINES))

    def on_trial_start(self, iteration, trials, trial, **info):
        self.log(f"trial {_short(trial)} ({describe(self.sweep, trial.config)}): started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = result
        done = result.get("epochs_done", 0)
        if "val/top1" not in result or (done % self.every and done != self.sweep.max_t):
            return
        terms = " ".join(f"{k[6:]} {v:.3f}" for k, v in result.items()
                         if k.startswith("train/") and isinstance(v, (int, float)) and "_" not in k[6:])
        test = f" | test top-1 {result['test/top1']:.2f}" if isinstance(result.get("test/top1"), (int, float)) else ""
        self.log(f"trial {_short(trial)} ({describe(self.sweep, trial.config)}) epoch {done}/{self.sweep.max_t}: "
                 f"val top-1 {result['val/top1']:.2f} (best {result.get('best/val/top1', result['val/top1']):.2f}) | "
                 f"{terms}{test} | {result.get('epoch_time_s', 0):.1f}s")

    def on_trial_complete(self, iteration, trials, trial, **info):
        done = int(self.last.get(trial.trial_id, {}).get("epochs_done", 0))
        how = "finished" if done >= self.sweep.max_t else f"stopped early at epoch {done} (ASHA)"
        best = self.last.get(trial.trial_id, {}).get("best/val/top1")
        self.log(f"trial {_short(trial)} ({describe(self.sweep, trial.config)}): {how}"
                 + (f", best val top-1 {best:.2f}" if isinstance(best, (int, float)) else ""))

    def on_trial_error(self, iteration, trials, trial, **info):
        from raylg.ray.report import first_error_line

        error = ""
        path = getattr(trial, "error_file", None) or ""
        try:
            error = first_error_line(Path(path).read_text()) if path and Path(path).is_file() else ""
        except OSError:
            pass
        self.log(f"trial {_short(trial)} ({describe(self.sweep, trial.config)}): failed: {error or 'see its log'}")
