"""MLflow as its users see it, against a real `mlflow server` (conftest's mlflow_server): two
small sweeps of one name on the session's Ray head and a plain jobs/train.py run. The runs
record their data and teacher as dataset inputs (digests = the runs' own data fingerprints),
system metrics, nesting under the sweep's parent; each sweep registers its best finished trial
as a new version of raylg-<name>; and headless Chromium opens the pages a user would."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import TINY, free_port
from raylg.ray import spec as spec_lib, sweep as sweep_lib
from raylg.tracking import EXPERIMENT_KIND, MAX_DIGEST, ui_url

pytestmark = pytest.mark.slow

NAME = "ui"
FAST = {"schedule.epochs": 1, "schedule.warmup_epochs": 0, "schedule.min_lr": 0.0, "schedule.warmup_lr": 0.0,
        "run.max_train_batches": 3, "data.eval_batch_size": 512, "model.name": "pvt_v2_micro"}
SYSTEM = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes")


def write(tmp: Path, storage: str, teacher: Path, uri: str, **fields) -> Path:
    spec = {"name": NAME, "run_config": str(TINY), "set": dict(FAST),
            "arms": {"baseline": {"guidance.locality.beta": 0.0}, "lg": {"guidance.locality.beta": 2.5}},
            "seeds": [1, 2], "seed_fields": ["run.seed"], "teacher": {"path": str(teacher)}, "asha": "off",
            "max_concurrent": 4, "resources": {"workers": 0, "cpus_per_worker": 1}, "storage": str(tmp / storage),
            "mlflow_uri": uri}
    spec.update(fields)
    path = tmp / f"{storage}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def sweeps(ray_head, digits_teacher, mlflow_server, tmp_path_factory):
    """Sweep A (2 arms x 2 seeds), then sweep B of the same name in other storage (1 trial)."""
    tmp = tmp_path_factory.mktemp("mlflow-sweeps")
    t0 = time.monotonic()
    rows_a = sweep_lib.run(spec_lib.load(write(tmp, "a", digits_teacher, mlflow_server.url)))
    t1 = time.monotonic()
    rows_b = sweep_lib.run(spec_lib.load(write(tmp, "b", digits_teacher, mlflow_server.url,
                                               arms={"lg": {"guidance.locality.beta": 2.5}}, seeds=[3])))
    print(f"sweep a: {t1 - t0:.0f} s, sweep b: {time.monotonic() - t1:.0f} s")
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = {r.data.tags["raylg.sweep_storage"].rsplit("/", 2)[-2]: r for r in runs if r.data.tags.get("raylg.role") == "sweep"}
    kids = {r.data.tags["raylg.trial_id"]: r for r in runs if r.data.tags.get("raylg.role") == "trial"}
    return {"tmp": tmp, "rows": {"a": rows_a, "b": rows_b}, "client": client, "exp": exp, "parents": parents, "kids": kids,
            "server": mlflow_server, "teacher": digits_teacher}


def test_trials_nest_under_their_sweep_and_record_data_teacher_and_system_metrics(sweeps):
    client, exp, parents, kids = sweeps["client"], sweeps["exp"], sweeps["parents"], sweeps["kids"]
    assert exp.tags[EXPERIMENT_KIND] == "custom_model_development"
    assert sorted(parents) == ["a", "b"]  # one name, two sweeps: a parent each
    assert all(p.info.status == "FINISHED" for p in parents.values())
    rows = {s: {r["trial"]: r for r in sweeps["rows"][s]} for s in ("a", "b")}
    assert len(rows["a"]) == 4 and len(rows["b"]) == 1 and set(kids) == set(rows["a"]) | set(rows["b"])
    teacher_sha = hashlib.sha256(sweeps["teacher"].read_bytes()).hexdigest()
    for s in ("a", "b"):
        for trial, row in rows[s].items():
            run = kids[trial]
            assert run.data.tags["mlflow.parentRunId"] == parents[s].info.run_id and run.info.status == "FINISHED"
            data = json.loads((sweeps["tmp"] / s / NAME / "trials" / trial / "data.json").read_text())
            inputs = {(i.dataset.name, next(t.value for t in i.tags if t.key == "mlflow.data.context")): i.dataset
                      for i in run.inputs.dataset_inputs}
            teacher = {("teacher-resnet20_cifar", "teacher")} if row["beta"] else set()
            want = {("digits-train", "train"), ("digits-val", "val")} | teacher
            assert set(inputs) == want, (trial, set(inputs))
            for split in ("train", "val"):
                sha = data["splits"]["splits"][split]["sha256"]
                assert inputs[(f"digits-{split}", split)].digest == sha[:MAX_DIGEST]
                assert json.loads(inputs[(f"digits-{split}", split)].profile)["sha256"] == sha
            if row["beta"]:
                t = inputs[("teacher-resnet20_cifar", "teacher")]
                assert t.digest == teacher_sha[:MAX_DIGEST] and json.loads(t.profile)["sha256"] == teacher_sha
                assert json.loads(t.source)["uri"] == str(sweeps["teacher"].resolve())
            for key in SYSTEM:  # from the trial's own process
                assert [m.step for m in client.get_metric_history(run.info.run_id, key)], (trial, key)
            assert {"config.yaml", "data.json", "student.safetensors"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    # the same train split (digits, seed fields = run.seed only) is one dataset however many runs use it
    digests = {i.dataset.digest for r in kids.values() for i in r.inputs.dataset_inputs if i.dataset.name == "digits-train"}
    assert len(digests) == 1


def _best_runs(client, kids, trials) -> tuple[float, set[str]]:
    best = {t: max(m.value for m in client.get_metric_history(kids[t].info.run_id, "val/top1")) for t in trials}
    top = max(best.values())
    return top, {kids[t].info.run_id for t, v in best.items() if v == top}


def test_each_sweep_registers_its_best_trial_as_a_new_version(sweeps, tmp_path):
    client, kids, parents = sweeps["client"], sweeps["kids"], sweeps["parents"]
    versions = sorted(client.search_model_versions(f"name = 'raylg-{NAME}'"), key=lambda v: int(v.version))
    assert [v.version for v in versions] == ["1", "2"]  # the name existed (sweep A's): a new version, A's kept
    v1, v2 = versions
    for s, v in (("a", v1), ("b", v2)):
        trials = [r["trial"] for r in sweeps["rows"][s]]
        top, best_ids = _best_runs(client, kids, trials)
        assert v.run_id in best_ids and v.run_id in {kids[t].info.run_id for t in trials}  # this sweep's own best
        assert v.source == f"runs:/{v.run_id}/student.safetensors"
        assert parents[s].data.tags["raylg.registered_model"] == f"raylg-{NAME}/{v.version}"
        run = client.get_run(v.run_id)
        assert v.tags["arm"] == run.data.tags["arm"] and v.tags["seed"] == run.data.tags["seed"]
        assert v.tags["student"] == "pvt_v2_micro" and float(v.tags["beta"]) == float(run.data.tags["beta"])
        assert math.isclose(float(v.tags["val/top1"]), top, abs_tol=1e-3)
        verdict = json.loads(v.tags["verdict"])
        saved = json.loads((sweeps["tmp"] / s / NAME / "verdict.json").read_text())
        assert verdict == next(x for x in saved["verdict"] if x["arm"] == v.tags["arm"])
    # the registered weights load without unpickling anything: the student's own tensors
    import mlflow.artifacts
    from safetensors.torch import load_file

    source = client.get_model_version_download_uri(f"raylg-{NAME}", "1")
    path = mlflow.artifacts.download_artifacts(source, dst_path=str(tmp_path), tracking_uri=sweeps["server"].url)
    state = load_file(path)
    assert state and not any(k.startswith(("student.", "guidance", "aligners")) for k in state)


def test_plain_run_is_recorded_the_same_way(mlflow_server, tmp_path):
    import train

    train.main(["--out", str(tmp_path), "--name", "plain", "--set", "run.progress=false", "--set", "schedule.epochs=1",
                "--set", "schedule.warmup_epochs=0", "--set", "run.max_train_batches=2", "--mlflow-uri", mlflow_server.url,
                "--mlflow-experiment", "plain-runs"])
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name("plain-runs")
    assert exp.tags[EXPERIMENT_KIND] == "custom_model_development"
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["raylg.run_dir"] == str((tmp_path / "plain").resolve())
    data = json.loads((tmp_path / "plain" / "data.json").read_text())
    got = {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}
    assert got == {f"digits-{s}": data["splits"]["splits"][s]["sha256"][:MAX_DIGEST] for s in ("train", "val")}
    assert run.data.params["run.precision_resolved"] == data["resolved"]["run.precision_resolved"]
    assert all(k in run.data.metrics for k in SYSTEM + ("val/top1", "train/ce", "best/val/top1"))
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "data.json", "student.safetensors", "summary.json"} <= arts


def test_fit_calls_its_callbacks_and_a_diverging_plain_run_ends_failed(tmp_path, capsys):
    """The seam itself (no MLflow): on_start with data.json, a row per epoch, on_end; then a run
    that diverges: jobs/train.py exits 1 and its MLflow run ends FAILED naming the error."""
    import train
    from conftest import tiny_config
    from raylg.fit import Callback, fit

    class Record(Callback):
        def __init__(self):
            self.calls = []

        def on_start(self, cfg, info):
            self.calls.append(("start", info))

        def on_epoch(self, row):
            self.calls.append(("epoch", row["epoch"]))

        def on_end(self, summary, status, error=""):
            self.calls.append(("end", status, summary is not None))

    rec = Record()
    fit(tiny_config(tmp_path, **{"run.max_train_batches": 2}), tmp_path / "r", callbacks=[rec])
    assert rec.calls[0] == ("start", json.loads((tmp_path / "r" / "data.json").read_text()))
    assert rec.calls[1:] == [("epoch", 0), ("epoch", 1), ("end", "FINISHED", True)]

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(SystemExit) as e:
        train.main(["--out", str(tmp_path), "--name", "boom", "--set", "run.progress=false", "--set", "optim.lr=1e12",
                    "--set", "schedule.epochs=1", "--set", "schedule.warmup_epochs=0", "--set", "run.max_train_batches=3",
                    "--mlflow-uri", uri])
    assert e.value.code == 1 and "training diverged" in capsys.readouterr().err
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("boom").experiment_id])
    assert run.info.status == "FAILED" and "NonFiniteLoss" in run.data.tags["raylg.error"]
    assert client.get_metric_history(run.info.run_id, SYSTEM[0])  # stopped with a closing sample, not left running


@pytest.mark.parametrize("uri, message", [
    ("http://127.0.0.1:{port}", "is unreachable"),
    ("{server}/not-mlflow", "HTTP Error 404"),  # a server that answers, but not as MLflow
])
def test_plain_run_with_an_unusable_mlflow_is_refused_before_training(mlflow_server, tmp_path, capsys, uri, message):
    import train

    uri = uri.format(port=free_port(), server=mlflow_server.url)
    with pytest.raises(SystemExit) as e:
        train.main(["--out", str(tmp_path), "--name", "x", "--mlflow-uri", uri])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing trained, nothing written


# --- seen in a real browser -----------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_mlflow_ui_opens_on_the_runs_the_model_and_the_verdict(sweeps, tmp_path):
    """Headless Chromium, a fresh profile. Screenshots in tmp_path (printed)."""
    from playwright.sync_api import sync_playwright

    exp, parents, url = sweeps["exp"], sweeps["parents"], sweeps["server"].url
    trials = [r["trial"] for s in ("a", "b") for r in sweeps["rows"][s]]
    ml = "workflowType=machine_learning"  # MLflow 3.17's UI view switch (ui_url)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
                                                        args=FLAGS, viewport={"width": 1500, "height": 950})
        page = context.new_page()
        page.set_default_timeout(120_000)  # a loaded CI machine renders slowly

        # the page raylg prints: the experiment's runs, the sweeps' parents with their trials nested
        page.goto(ui_url(url, exp.experiment_id))
        page.get_by_role("link", name=NAME, exact=True).first.wait_for()
        assert f"/experiments/{exp.experiment_id}/runs" in page.url
        assert page.get_by_role("link", name=trials[0], exact=True).count() == 0  # nested: folded under the parents
        expanders = page.locator("button[data-component-id$='runnamecellrenderer.tsx_46']")  # the parents' +
        expanders.first.wait_for()
        assert expanders.count() == 2
        for i in range(expanders.count()):
            expanders.nth(i).click()
        for trial in trials:
            page.get_by_role("link", name=trial, exact=True).wait_for()
        assert page.get_by_text("digits-train (").count() == len(trials)  # the Dataset column, a cell per trial
        page.screenshot(path=str(tmp_path / "runs.png"))

        # the registered model: a version per sweep
        page.goto(f"{url}/#/models/raylg-{NAME}?{ml}")
        page.get_by_role("link", name="Version 2", exact=True).wait_for()
        assert page.get_by_role("link", name="Version 1", exact=True).count() == 1
        page.screenshot(path=str(tmp_path / "model.png"))

        # the first sweep's verdict on its parent run
        page.goto(f"{url}/#/experiments/{exp.experiment_id}/runs/{parents['a'].info.run_id}/artifacts/verdict.md?{ml}")
        page.get_by_text("pairs each seed with the same seed of the baseline arm").first.wait_for()
        assert page.get_by_role("cell", name="baseline", exact=True).count() == 1
        page.screenshot(path=str(tmp_path / "verdict.png"))

        # for the record, not asserted: the experiment's bare URL in a fresh browser (the UI's own choice of view)
        page.goto(f"{url}/#/experiments/{exp.experiment_id}")
        page.wait_for_timeout(5000)
        page.screenshot(path=str(tmp_path / "experiment-bare-url.png"))
        context.close()
    print(f"screenshots: {tmp_path}")
