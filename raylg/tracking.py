"""MLflow at the edge: one experiment per sweep, a parent run per sweep, a child run per trial.

Runs are found again by tags (raylg.sweep / raylg.trial_id), never created twice: a trial
that restarts, or a sweep that resumes after its driver died, logs into the run it had.
Everything goes through MlflowClient with explicit run ids (no global active run), so a
worker, the driver and a test can all hold runs at once.

`MlflowCallback` is the fit() callback (raylg.fit.Callback) that records one run: params, the
run's data and teacher as dataset inputs, per-epoch metrics, system metrics (CPU, memory, GPU
when there is one). jobs/train.py gives it a run of its own; a Ray trial's rank-0 worker gives
it the trial's child run, which the sweep's driver closes (raylg.ray.report).
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

ROLE, SWEEP, TRIAL = "raylg.role", "raylg.sweep", "raylg.trial_id"
STOPPED_EARLY = "raylg.stopped_early"
SWEEP_KEY = "raylg.sweep_storage"  # a sweep is its name and its storage: two sweeps of one name share a server
RUN_DIR = "raylg.run_dir"  # a plain run (jobs/train.py) is found again by its directory on --resume
# MLflow 3's experiment type: "custom_model_development" = model training (runs, metrics, models),
# as opposed to "genai_development" (traces, prompts)
EXPERIMENT_KIND, TRAINING = "mlflow.experimentKind", "custom_model_development"


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
        hint = ""
        if "error code 401" in str(e):  # /health is public; the API wants credentials (basic-auth)
            hint = ("; it wants credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                    "MLFLOW_TRACKING_TOKEN) here, and on every Ray node (trials log to MLflow from there)")
        raise TrackingError(f"MLflow tracking store {uri} refused a query: {e}{hint}") from None


def _str(v: Any) -> str:
    return str(v)[:6000]


def _quote(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("'", "\\'")


def ui_url(uri: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs. MLflow 3.17's UI picks its GenAI view or its
    model-training view from the switch in its side bar (GenAI until a browser is switched, and
    remembered there), whatever the experiment's kind; `workflowType=machine_learning` in the
    URL picks model training. For a local store the page is that of `mlflow ui` (ui_command)."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def local_artifacts(uri: str) -> str | None:
    """Artifacts of a sqlite store beside its database (MLflow's default is ./mlruns of the
    process's working directory); None for a server, which places them itself."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()


def ui_command(uri: str) -> str:
    """The command that serves a local store's UI ("" for a server)."""
    return "" if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"


class Tracker:
    def __init__(self, uri: str):
        # MLflow's client prints two links to stdout per run it closes on a server (links that open
        # the UI's GenAI view); raylg prints its own (ui_url). Set the variable to false to keep them.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    # --- experiments and runs -------------------------------------------------------
    def experiment(self, name: str, artifact_location: str | None = None) -> str:
        """The experiment, created with the model-training kind (an existing one without a kind gets it)."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            return self.client.create_experiment(name, artifact_location=artifact_location, tags={EXPERIMENT_KIND: TRAINING})
        if EXPERIMENT_KIND not in exp.tags:
            self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, TRAINING)
        return exp.experiment_id

    def _find(self, experiment_id: str, tag: str, value: str, more: dict[str, str] | None = None) -> str | None:
        tags = {tag: value, **(more or {})}
        filt = " and ".join(f"tags.`{k}` = '{_quote(v)}'" for k, v in tags.items())
        runs = self.client.search_runs([experiment_id], filter_string=filt, max_results=2)
        return runs[0].info.run_id if runs else None

    def parent_run(self, experiment_id: str, sweep: str, params: dict[str, Any], key: str = "") -> str:
        """key: where the sweep's results live (its storage), so that another sweep of the same name
        on a shared server gets a parent run of its own."""
        run_id = self._find(experiment_id, SWEEP, sweep, {SWEEP_KEY: key} if key else None)
        if run_id is None and key:  # a parent recorded before runs had their storage tagged
            legacy = [r for r in self.client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP}` = '{_quote(sweep)}'",
                                                         max_results=100) if SWEEP_KEY not in r.data.tags]
            if legacy:
                run_id = legacy[0].info.run_id
                self.set_tags(run_id, {SWEEP_KEY: key})
        if run_id is None:
            run = self.client.create_run(experiment_id, run_name=sweep,
                                         tags={ROLE: "sweep", SWEEP: sweep, **({SWEEP_KEY: key} if key else {})})
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

    def plain_run(self, experiment_id: str, name: str, run_dir: str, params: dict[str, Any], tags: dict[str, Any],
                  resume: bool = False) -> str:
        """A run of jobs/train.py: a new one, or (resume) the one that recorded run_dir before."""
        run_id = self._find(experiment_id, RUN_DIR, run_dir) if resume else None
        if run_id is None:
            all_tags = {ROLE: "run", RUN_DIR: run_dir, **{k: _str(v) for k, v in tags.items()}}
            run_id = self.client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id
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

    # --- the model registry ---------------------------------------------------------
    def register(self, name: str, run_id: str, artifact_path: str, tags: dict[str, Any], description: str = "",
                 model_description: str = ""):
        """A version of registered model `name` whose source is the run's artifact (a file: MLflow
        registers any artifact path, no MLmodel needed). A name that exists gets a new version,
        never an overwrite; a run that already has a version under the name keeps it (a resumed
        sweep registers nothing twice). Returns the ModelVersion."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name, description=model_description or None)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        tags = {k: _str(v) for k, v in tags.items()}
        have = self.client.search_model_versions(f"name = '{_quote(name)}' and run_id = '{run_id}'")
        if have:
            mv = have[0]
            for k, v in tags.items():
                self.client.set_model_version_tag(name, mv.version, k, v)
            return self.client.get_model_version(name, mv.version)
        return self.client.create_model_version(name, source=f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags=tags,
                                                description=description or None)


# --- what a run learned from, as MLflow dataset inputs ----------------------------------

MAX_DIGEST = 36  # MLflow stores at most 36 characters of a dataset's digest: the sha256's first 36 hex digits
CONTEXT = "mlflow.data.context"


def dataset_inputs(info: dict[str, Any], teacher_uri: str = "") -> list:
    """One input per split (context train / val / test) named DATASET-SPLIT, digest = the split
    fingerprint's sha256 (its first 36 hex digits; the whole fingerprint is the profile), and the
    teacher (context teacher, digest = its weights' sha256) when the run has one. `info` is what
    fit() writes to data.json."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    d = info["splits"]
    if d.get("root"):
        source_type, source = "local", {"uri": d["root"]}
    else:
        source_type, source = "code", {"dataset": d["name"], "loader": "raylg.data (bundled with its package)"}
    out = []
    for split, fp in d["splits"].items():
        profile = {"count": fp["count"], "source_split": fp["source_split"],
                   "per_class": d["per_class"] if split == "train" else 0,
                   "split_seed": d["split_seed"], "sha256": fp["sha256"], "class_counts": fp.get("class_counts")}
        ds = Dataset(name=f"{d['name']}-{split}", digest=fp["sha256"][:MAX_DIGEST], source_type=source_type,
                     source=json.dumps(source), profile=json.dumps(profile))
        out.append(DatasetInput(ds, [InputTag(CONTEXT, split)]))
    t = info.get("teacher")
    if t and t.get("sha256"):
        ds = Dataset(name=f"teacher-{t.get('arch', 'teacher')}", digest=t["sha256"][:MAX_DIGEST], source_type="local",
                     source=json.dumps({"uri": teacher_uri}), profile=json.dumps(t))
        out.append(DatasetInput(ds, [InputTag(CONTEXT, "teacher")]))
    return out


def _log_inputs(client, run_id: str, datasets: list, tries: int = 4) -> None:
    """log_inputs, again when a concurrent run created the same dataset row first: MLflow's store
    gets-or-creates a dataset (experiment, name, digest) without a lock, so two trials of one seed
    that start together can both try to insert it; the loser's transaction is rolled back whole."""
    for attempt in range(tries):
        try:
            return client.log_inputs(run_id, datasets=datasets)
        except Exception as e:  # MlflowException from a server, SQLAlchemy's IntegrityError from a local store
            if attempt == tries - 1 or not any(w in str(e) for w in ("IntegrityError", "UNIQUE constraint", "unique constraint")):
                raise
            time.sleep(0.2 * (attempt + 1))


class SystemMetrics:
    """MLflow's system metrics monitor (CPU, memory, disk, network; GPU through nvidia-ml-py when
    there is one) on one run, by its id, sampling every `interval` s (MLflow's
    MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it). stop() adds a closing sample, so a run
    shorter than the interval has one too."""

    def __init__(self, uri: str, run_id: str, interval: float = 10.0):
        import logging

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop notices stay off the console
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, tracking_uri=uri, resume_logging=True)
        self.monitor.start()

    def stop(self) -> None:
        m = self.monitor
        m.finish()
        m.collect_metrics()
        m.publish_metrics(m.aggregate_metrics())
        m.mlflow_logger.flush()



# --- the fit() callback -------------------------------------------------------------------

from raylg.fit import Callback  # noqa: E402  (raylg.fit imports no MLflow)


class MlflowCallback(Callback):
    """Records one run, from its rank-0 process: the resolved params, config.yaml and data.json,
    the data and teacher as dataset inputs, system metrics, a metrics row per epoch. owns_run
    (plain runs): at the end it also logs the best student and the summary and closes the run
    FINISHED or FAILED; a sweep's trial leaves that to the sweep's driver, since ASHA may stop a
    trial before its end."""

    def __init__(self, tracker: Tracker, run_id: str, *, owns_run: bool = True, system_metrics: bool = True,
                 teacher_uri: str = "", interval: float = 10.0):
        self.tracker, self.run_id, self.owns_run = tracker, run_id, owns_run
        self.system_metrics, self.teacher_uri, self.interval = system_metrics, teacher_uri, interval
        self._monitor: SystemMetrics | None = None

    def describe(self) -> str:
        """Where the run is: its id and the UI page of its experiment's runs."""
        exp = self.tracker.client.get_run(self.run_id).info.experiment_id
        cmd = ui_command(self.tracker.uri)
        return f"run {self.run_id} at {ui_url(self.tracker.uri, exp)}" + (f" (serve it with: {cmd})" if cmd else "")

    def on_start(self, cfg, info: dict[str, Any]) -> None:
        from raylg import config as config_lib

        client = self.tracker.client
        run = client.get_run(self.run_id)
        resolved = {k: v for k, v in (info.get("resolved") or {}).items() if k not in run.data.params}
        if resolved:
            self.tracker.log_params(self.run_id, resolved)
        if not run.inputs.dataset_inputs:  # a restarted trial logged them already
            shards = cfg.guidance.locality.source == "shards"
            teacher = self.teacher_uri or (cfg.guidance.locality.shards if shards else cfg.teacher.path)
            _log_inputs(client, self.run_id, dataset_inputs(info, teacher))
        client.log_text(self.run_id, config_lib.dump(cfg), "config.yaml")
        client.log_dict(self.run_id, info, "data.json")
        if self.system_metrics:
            self._monitor = SystemMetrics(self.tracker.uri, self.run_id, self.interval)

    def on_epoch(self, row: dict[str, Any]) -> None:
        self.tracker.log_metrics(self.run_id, row, step=row["epoch"])

    def on_end(self, summary: dict[str, Any] | None, status: str, error: str = "") -> None:
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None
        if not self.owns_run:
            return
        if summary:
            if summary.get("student") and Path(summary["student"]).is_file():
                self.tracker.client.log_artifact(self.run_id, summary["student"])
            self.tracker.client.log_dict(self.run_id, summary, "summary.json")
            self.tracker.log_metrics(self.run_id, {"best/val/top1": summary["best"]["val/top1"]}, step=summary["best"]["epoch"])
        if error:
            self.tracker.set_tags(self.run_id, {"raylg.error": error})
        self.tracker.close(self.run_id, status)


__all__ = ["MlflowCallback", "Tracker", "TrackingError", "check_reachable", "dataset_inputs", "default_uri", "ui_url",
           "ui_command", "RunStatus"]
