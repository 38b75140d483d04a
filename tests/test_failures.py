"""Runs that must fail loudly: a diverging run ends in one `error:` line naming the step, the
terms, the lr and what to change, and keeps its last good checkpoint; a feature set whose
manifest describes other images than the run's is refused, naming the fingerprints' fields."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, tiny_config
from raylg import checkpoint, config as config_lib, data, teacher as teacher_lib
from raylg.features import FeatureError, precompute
from raylg.fit import setup

PER_CLASS = 8


def test_diverging_run_prints_one_error_line_and_keeps_its_last_good_checkpoint(tmp_path, capsys):
    import train

    # epoch 1 is one step at the warmup lr (1e-5); epoch 2's step at lr 5e11 breaks the weights,
    # and epoch 3's first loss is non-finite
    args = ["--out", str(tmp_path), "--name", "diverge", "--set", "optim.lr=1e12", "--set", "run.progress=false",
            "--set", "run.max_train_batches=1", "--set", "schedule.epochs=4", "--set", "schedule.warmup_epochs=2",
            "--set", "data.eval_batch_size=512"]
    with pytest.raises(SystemExit) as exit_:
        train.main(args)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: training diverged: non-finite loss at step "), err
    line = lines[0]
    assert "Traceback" not in err
    assert re.search(r"at step \d+ \(lr [\d.e+]+\): terms \{'ce': nan\}", line), line
    assert "hint: lower optim.lr (now 1e+12)" in line and "optim.clip_grad" in line
    named = re.search(r"\(epoch (\d+)\) (?:is kept )?in ([^;\s]+)", line)
    assert named, line
    epoch, kept = int(named.group(1)), named.group(2)
    run_dir = tmp_path / "diverge"
    assert kept.startswith(str(run_dir / "checkpoints"))
    state = json.loads((checkpoint.find(kept) / checkpoint.STATE_FILE).read_text())
    assert state["epoch"] + 1 == epoch and math.isfinite(state["metrics"]["row"]["val/loss"])
    weights = load_file(str(checkpoint.find(kept) / checkpoint.MODEL_FILE))
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) < 4 and rows[-1]["epoch"] + 1 >= epoch  # it stopped; nothing after the divergence was written
    assert not (run_dir / "student.safetensors").exists() and not (run_dir / "summary.json").exists()


def test_diverging_first_epoch_says_no_checkpoint_was_written(tmp_path, capsys):
    import train

    with pytest.raises(SystemExit) as exit_:
        train.main(["--out", str(tmp_path), "--name", "d", "--set", "optim.lr=1e12", "--set", "run.progress=false",
                    "--set", "run.max_train_batches=4", "--set", "schedule.epochs=2", "--set", "schedule.warmup_epochs=0",
                    "--set", "data.eval_batch_size=512"])
    assert exit_.value.code == 1
    (line,) = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert line.startswith("error: training diverged: non-finite loss at step ") and "no checkpoint was written" in line
    assert not (tmp_path / "d" / "checkpoints" / "last").exists()


# --- a feature set whose manifest describes other images ------------------------------------


def bundle_for(**overrides):
    return data.build(config_lib.load(TINY, {f"data.{k}": v for k, v in {"per_class": PER_CLASS, **overrides}.items()}).data)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """An untrained (seeded) ResNet-20 with a card for the run's 80 images, and its features
    of a larger selection (160 images: per_class 16) and of exactly the run's images."""
    from raylg.models import create_teacher

    tmp = tmp_path_factory.mktemp("failures-features")
    run = bundle_for()
    torch.manual_seed(0)
    model = create_teacher("resnet20_cifar", in_chans=1, num_classes=10)
    weights = tmp / "teacher.safetensors"
    teacher_lib.save(model, weights, arch="resnet20_cifar", in_chans=1, num_classes=10, img_size=32,
                     stage_channels=[16, 32, 64], val_top1=0.0, fingerprint=run.fingerprint("train"), config={})
    precompute(str(weights), run, str(tmp / "exact"), batch_size=80, progress=False)
    precompute(str(weights), bundle_for(per_class=16), str(tmp / "larger"), batch_size=80, progress=False)
    return tmp


def tampered(features, tmp_path, which: str, fn):
    dest = tmp_path / which
    shutil.copytree(features / which, dest)
    p = dest / "manifest.json"
    m = json.loads(p.read_text())
    fn(m["dataset"])
    p.write_text(json.dumps(m))
    return dest


def shards_cfg(tmp_path, uri):
    return tiny_config(tmp_path, **{"data.per_class": PER_CLASS, "guidance.locality.source": "shards",
                                    "guidance.locality.shards": str(uri)})


def test_manifest_claiming_other_images_is_refused_naming_both_fingerprints(features, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYLG_FEATURE_CACHE", str(tmp_path / "cache"))
    run_fp = bundle_for().fingerprint("train")
    assert setup(shards_cfg(tmp_path, features / "exact")).teacher_card["coverage"] == "exact"
    # the same selection, but the manifest says its images hash differently: the shards hold every
    # index with the right label, yet the manifest claims other images
    other = "0" * 64
    d = tampered(features, tmp_path, "exact", lambda ds: ds.update(sha256=other))
    with pytest.raises(FeatureError, match=rf"computed on other training images than this run \(sha256: features '{other}' "
                                           rf"vs run '{run_fp['sha256']}'\): features whose dataset fingerprint differs"):
        setup(shards_cfg(tmp_path / "a", d))
    # a larger set of shards whose manifest claims a selection no larger than the run's (another seed)
    def claim(ds):
        ds.update(bundle_for(split_seed=3).fingerprint("train"))

    d = tampered(features, tmp_path, "larger", claim)
    with pytest.raises(FeatureError, match=r"other training images than this run \(seed: features 3 vs run 0, sha256: "
                                           r"features '\w+' vs run '\w+'\)"):
        setup(shards_cfg(tmp_path / "b", d))
    # a manifest claiming more images than its shards hold
    d = tampered(features, tmp_path / "c", "larger", lambda ds: ds.update(count=320))
    with pytest.raises(FeatureError, match=r"dataset fingerprint counts 320 images but its shards hold 160 rows"):
        setup(shards_cfg(tmp_path / "c", d))
    # the honest larger selection still serves the run (its images by index, labels checked)
    card = setup(shards_cfg(tmp_path / "d", features / "larger")).teacher_card
    assert card["coverage"] == "subset: the run's 80 images of the 160 in the shards"
