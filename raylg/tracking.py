"""MLflow at the edge: one experiment per sweep, a parent run per sweep, a child run per trial.

Runs are found again by tags (raylg.sweep / raylg.trial_id), never created twice: a trial
that restarts, or a sweep that resumes after its driver died, logs into the run it had.
Everything goes through MlflowClient with explicit run ids (no global active run), so a
worker, the driver and a test can all hold runs at once.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

ROLE, SWEEP, TRIAL = "raylg.role", "raylg.sweep", "raylg.trial_id"
STOPPED_EARLY = "raylg.stopped_early"


class TrackingError(RuntimeError):
    pass


def default_uri(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / 'mlflow.db').resolve()}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (before any trial) when an MLflow server does not answer or refuses us."""
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).read()
        except (urllib.error.URLError, OSError) as e:
            raise TrackingError(f"MLflow server {uri} is unreachable ({e}); start it or pass another --mlflow-uri") from None
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:
        raise TrackingError(f"MLflow tracking store {uri} refused a query: {e}") from None


def _str(v: Any) -> str:
    return str(v)[:6000]


class Tracker:
    def __init__(self, uri: str):
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    # --- experiments and runs -------------------------------------------------------
    def experiment(self, name: str, artifact_location: str | None = None) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return self.client.create_experiment(name, artifact_location=artifact_location)

    def _find(self, experiment_id: str, tag: str, value: str) -> str | None:
        runs = self.client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=2)
        return runs[0].info.run_id if runs else None

    def parent_run(self, experiment_id: str, sweep: str, params: dict[str, Any]) -> str:
        run_id = self._find(experiment_id, SWEEP, sweep)
        if run_id is None:
            run = self.client.create_run(experiment_id, run_name=sweep, tags={ROLE: "sweep", SWEEP: sweep})
            run_id = run.info.run_id
            self.log_params(run_id, params)
        else:
            self.client.update_run(run_id, status="RUNNING")
        return run_id

    def child_run(self, experiment_id: str, parent_id: str, trial_id: str, tags: dict[str, Any],
                  params: dict[str, Any]) -> str:
        run_id = self._find(experiment_id, TRIAL, trial_id)
        if run_id is None:
            all_tags = {ROLE: "trial", TRIAL: trial_id, "mlflow.parentRunId": parent_id, **{k: _str(v) for k, v in tags.items()}}
            run_id = self.client.create_run(experiment_id, run_name=trial_id, tags=all_tags).info.run_id
            self.log_params(run_id, params)
        else:
            self.client.update_run(run_id, status="RUNNING")
        return run_id

    def trial_runs(self, experiment_id: str, parent_id: str) -> dict[str, Any]:
        runs = self.client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                       max_results=10_000)
        return {r.data.tags[TRIAL]: r for r in runs if TRIAL in r.data.tags}

    # --- logging --------------------------------------------------------------------
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = [Param(k, _str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        self.client.log_batch(run_id, metrics=items)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, _str(v)) for k, v in tags.items()])

    def close(self, run_id: str, status: str) -> None:
        """status: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)

    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status


__all__ = ["Tracker", "TrackingError", "check_reachable", "default_uri", "RunStatus"]
