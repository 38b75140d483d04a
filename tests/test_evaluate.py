"""jobs/evaluate.py and raylg.evaluate: a run directory, a checkpoint and a student file give the
numbers the run itself measured; per-class accuracy and the confusion matrix agree with them;
files land beside the weights and in MLflow; bad paths, splits, weights and trackers are refused.

Two real runs of a few seconds each (digits: val only; Chaoyang written here: val and test)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import tiny_config
from raylg.data import DataError
from raylg.evaluate import EvaluateError, evaluate, locate
from raylg.fit import fit
from test_datasets_extra import write_chaoyang


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_runs")
    cfg = tiny_config(out, **{"run.name": "d", "schedule.epochs": 2, "run.max_train_batches": 3})
    summary = fit(cfg, out / "d")
    return out / "d", summary


@pytest.fixture(scope="module")
def chaoyang_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("chaoyang_eval")
    root = write_chaoyang(base / "chaoyang", train_per_class=6, test_per_class=3)
    cfg = tiny_config(base, **{"run.name": "c", "data.name": "chaoyang", "data.root": str(root), "schedule.epochs": 1,
                               "schedule.warmup_epochs": 0, "run.max_train_batches": 2, "optim.batch_size": 8,
                               "data.val_fraction": 0.34})
    summary = fit(cfg, base / "c")
    return base / "c", summary


def _same_numbers(a, b):
    return a["top1"] == b["top1"] and a["top5"] == b["top5"] and a["confusion"] == b["confusion"]


def test_run_dir_checkpoint_and_student_file_give_the_runs_own_val_numbers(digits_run):
    run_dir, summary = digits_run
    by_run = evaluate(run_dir, "val")
    by_ckpt = evaluate(run_dir / "checkpoints" / "best", "val")
    by_file = evaluate(run_dir / "student.safetensors", "val", write=False)
    assert (by_run["kind"], by_ckpt["kind"], by_file["kind"]) == ("run", "checkpoint", "student")
    assert _same_numbers(by_run, by_ckpt) and _same_numbers(by_run, by_file)
    # the best checkpoint's val top-1 as the training loop measured it, to the last digit
    assert by_run["top1"] == summary["best"]["val/top1"] and by_run["top5"] == summary["best"]["val/top5"]
    assert by_run["matches_run_data"] is True and by_run["epoch"] == by_ckpt["epoch"] == summary["best"]["epoch"]
    confusion = np.array(by_run["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == by_run["count"] == 179
    assert [p["count"] for p in by_run["per_class"]] == confusion.sum(1).tolist()
    acc = 100 * np.diag(confusion) / confusion.sum(1)
    assert [p["accuracy"] for p in by_run["per_class"]] == pytest.approx(acc.tolist())
    assert by_run["mean_class_accuracy"] == pytest.approx(acc.mean())
    assert np.diag(confusion).sum() / 179 * 100 == pytest.approx(by_run["top1"])
    # written beside the weights: the run directory, the checkpoint directory
    for result, folder in ((by_run, run_dir), (by_ckpt, run_dir / "checkpoints" / "best")):
        saved = json.loads((folder / "eval_val.json").read_text())
        assert saved["top1"] == result["top1"] and saved["fingerprint"]["split"] == "val"
        assert (folder / "eval_val_confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_test_split_equals_the_runs_final_test_figure(chaoyang_run):
    run_dir, summary = chaoyang_run
    result = evaluate(run_dir, "test")
    assert result["count"] == 12 and result["dataset"] == "chaoyang"
    assert result["top1"] == summary["test/top1"] and result["top5"] == summary["test/top5"]
    assert [p["class"] for p in result["per_class"]] == ["normal", "serrated", "adenocarcinoma", "adenoma"]
    assert result["matches_run_data"] is True
    assert (run_dir / "eval_test.json").is_file() and (run_dir / "eval_test_confusion.png").is_file()


def test_paths_that_are_none_of_the_three_are_refused(tmp_path, digits_run):
    run_dir, _ = digits_run
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    for path, match in [
        (tmp_path / "nothing", r"'.*nothing' does not exist; give a run directory"),
        (tmp_path / "empty", r"'.*empty' is none of a run directory \(config.yaml with student.safetensors or "
                             r"checkpoints/best/\), a checkpoint directory"),
        (tmp_path / "notes.txt", r"is a file but not .safetensors weights"),
    ]:
        with pytest.raises(EvaluateError, match=match):
            locate(path)
    lonely = tmp_path / "student.safetensors"
    shutil.copy(run_dir / "student.safetensors", lonely)
    with pytest.raises(EvaluateError, match=r"no config for '.*student.safetensors': looked for '.*config.yaml'; "
                                             r"pass the run's config"):
        evaluate(lonely, "val")
    assert evaluate(lonely, "val", config=run_dir / "config.yaml", write=False)["matches_run_data"] is None


def test_a_split_the_dataset_lacks_and_an_unknown_split(digits_run):
    run_dir, _ = digits_run
    with pytest.raises(DataError, match=r"digits has no 'test' split here \(splits: train, val\)"):
        evaluate(run_dir, "test")
    with pytest.raises(EvaluateError, match="split 'train': evaluate on one of val, test"):
        evaluate(run_dir, "train")


def test_weights_of_another_architecture_name_the_mismatched_tensors(tmp_path, digits_run):
    run_dir, _ = digits_run
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    for model, kwargs, match in [
        ("pvt_v2_micro", {}, r"do not fit pvt_v2_micro \(1 channels, 10 classes of digits, from .*pvt_v2_micro.yaml\): "
                             r"shape mismatch: patch_embed.proj.weight \(64x1x4x4 in the file, 32x1x7x7 in the model\).*; "
                             r"missing from the file: patch_embed.norm.weight, .* \(\+\d+ more\); "
                             r"not in the model: blocks.0.attn.proj.bias"),
        ("deit_micro_patch4_32", {"embed_dim": 32}, r"shape mismatch: cls_token \(1x1x64 in the file, 1x1x32 in "
                                                    r"the model\)"),
    ]:
        cfg["model"] = {**cfg["model"], "name": model, "kwargs": kwargs}
        other = tmp_path / f"{model}.yaml"
        other.write_text(yaml.safe_dump(cfg))
        with pytest.raises(EvaluateError, match=match):
            evaluate(run_dir / "student.safetensors", "val", config=other)
    with pytest.raises(EvaluateError, match=r"do not fit deit_micro_patch4_32 \(3 channels, 4 classes of chaoyang.*"
                                            r"patch_embed.proj.weight \(64x1x4x4 in the file, 64x3x4x4 in the model\).*"
                                            r"head.weight \(10x64 in the file, 4x64 in the model\)"):
        root = write_chaoyang(tmp_path / "ch", train_per_class=2, test_per_class=1)  # 4 classes, not 10
        evaluate(run_dir, "val", overrides={"data.name": "chaoyang", "data.root": str(root)})


def test_mlflow_logging_and_refusals_before_evaluating(tmp_path, digits_run):
    run_dir, _ = digits_run
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("e", artifact_location=str(tmp_path / "art"))).info.run_id
    (run_dir / "eval_val.json").unlink(missing_ok=True)
    for mlflow, match in [
        ((uri, "0123456789abcdef"), r"MLflow run '0123456789abcdef' is not in the tracking store sqlite:"),
        (("http://127.0.0.1:9", run_id), r"MLflow server http://127.0.0.1:9 is unreachable"),
        ((uri, ""), r"needs both --mlflow-uri and --run-id \(got uri 'sqlite:.*', run id 'none'\)"),
    ]:
        with pytest.raises(EvaluateError, match=match):
            evaluate(run_dir, "val", mlflow=mlflow)
        assert not (run_dir / "eval_val.json").exists()  # refused before evaluating
    result = evaluate(run_dir, "val", mlflow=(uri, run_id))
    data = client.get_run(run_id).data
    assert data.metrics["eval/val/top1"] == result["top1"] and data.metrics["eval/val/top5"] == result["top5"]
    assert data.metrics["eval/val/class/3"] == pytest.approx(result["per_class"][3]["accuracy"])
    assert data.tags["raylg.eval.val"] == str(run_dir / "student.safetensors")
    assert sorted(a.path for a in client.list_artifacts(run_id, "evaluation")) == [
        "evaluation/eval_val.json", "evaluation/eval_val_confusion.png"]


def test_job_prints_the_figures_and_refuses_bad_input_in_one_line(tmp_path, digits_run, capsys):
    import evaluate as job

    run_dir, summary = digits_run
    result = job.main([str(run_dir), "--split", "val", "--set", "data.eval_batch_size=64"])
    out = capsys.readouterr().out
    assert f"top-1 {summary['best']['val/top1']:.2f}%" in out and "eval_val.json" in out
    assert result["top1"] == summary["best"]["val/top1"]
    with pytest.raises(SystemExit) as e:
        job.main([str(run_dir), "--split", "test"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "error: digits has no 'test' split here (splits: train, val)"
    with pytest.raises(SystemExit):
        job.main([str(tmp_path), "--run-id", "abc"])
    assert "is none of a run directory" in capsys.readouterr().err
