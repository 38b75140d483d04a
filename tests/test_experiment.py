"""The evidence script (jobs/experiments/lg_vs_baseline.py) end to end in smoke mode, on real
Fashion-MNIST: a teacher and every arm train (4 batches each), the table, results and plot
are written, and a second call reuses every finished run instead of training it again."""

from __future__ import annotations

import importlib.util
import json

from conftest import ROOT
from raylg import config as config_lib


def load_script():
    spec = importlib.util.spec_from_file_location("lg_vs_baseline", ROOT / "jobs/experiments/lg_vs_baseline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_experiment_writes_the_table_and_reuses_finished_runs(tmp_path):
    exp = load_script()
    argv = ["--smoke", "--out", str(tmp_path), "--set", "model.name=deit_micro_patch4_32", "--set", "run.precision=fp32"]
    text = exp.main(argv)
    lines = text.splitlines()
    assert lines[0].startswith("| arm | 50/class best val top-1 | 50/class test top-1 |")
    assert len(lines) == 2 + 1 + len(exp.ARMS)  # header, rule, teacher, every arm
    for arm, (label, _) in exp.ARMS.items():
        assert any(line.startswith(f"| {label} | ") and "(n=1)" in line for line in lines), arm
    first = json.loads((tmp_path / "results.json").read_text())
    assert first["meta"]["student"]["model.name"] == "deit_micro_patch4_32"
    rows = first["rows"]
    assert {r["arm"] for r in rows} == {"teacher", *exp.ARMS} and not any(r["reused"] for r in rows)
    for r in rows:
        assert 0 <= r["test_top1"] <= 100 and 0 <= r["best_val_top1"] <= 100
    run = tmp_path / "runs" / "pc50-seed1"
    base, lg_drloc = (config_lib.load(run / arm / "config.yaml") for arm in ("baseline", "lg_drloc"))
    assert not base.teacher.path and base.guidance.drloc.weight == 0  # arms differ in their terms alone
    assert lg_drloc.teacher.path == str(run / "teacher" / "teacher.safetensors") and lg_drloc.guidance.drloc.weight == 0.5
    assert config_lib.diff(base, lg_drloc, ignore=("run.name",)).keys() == {"teacher.path", "guidance.drloc.weight"}
    assert (tmp_path / "lg_vs_baseline.png").stat().st_size > 10_000
    assert (tmp_path / "table.md").read_text().strip() == text

    again = exp.main(argv)
    second = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert all(r["reused"] for r in second) and again == text
    assert [r["test_top1"] for r in second] == [r["test_top1"] for r in rows]
