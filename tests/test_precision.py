"""run.precision: auto follows the hardware (CUDA capability, the CPU's bf16 flags), explicit bf16 where
it is emulated warns with the cost, and the run records what it resolved."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from conftest import tiny_config
from raylg import config as config_lib, precision
from raylg.fit import Hooks, fit


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert {"avx2", "avx512_bf16"} <= precision.cpu_flags(f)
    assert precision.cpu_flags(tmp_path / "missing") == set()
    assert precision.cpu_native({"avx2", "avx512f", "avx512_bf16"})[0]
    assert precision.cpu_native({"avx2", "amx_tile", "amx_bf16"})[0]
    assert not precision.cpu_native({"avx2", "avx512f"})[0]


def test_this_cpu_resolves_by_its_own_flags():
    native = bool({"avx512_bf16", "amx_bf16"} & precision.cpu_flags())
    r = precision.resolve("auto", torch.device("cpu"))
    assert r.precision == ("bf16" if native else "fp32") and r.native_bf16 is native and r.requested == "auto"
    assert precision.resolve("fp32", torch.device("cpu")).precision == "fp32"


@pytest.mark.parametrize("cap, want", [((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "fp32"), ((6, 1), "fp32")])
def test_auto_on_cuda_follows_the_capability(cap, want):
    native, why = precision.cuda_native("Test GPU", cap)
    assert precision.decide("auto", native, why, "cuda").precision == want and f"sm_{cap[0]}{cap[1]}" in why


def test_explicit_bf16_without_native_support_warns_with_the_cost():
    native, why = precision.cpu_native({"avx2"})
    with pytest.warns(precision.PrecisionWarning, match=r"~10x slower than fp32 .*run.precision: auto"):
        r = precision.decide("bf16", native, why, "cpu")
    assert r.precision == "bf16"  # honoured, only warned
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.decide("bf16", *precision.cpu_native({"avx512_bf16"}), "cpu")
    with pytest.raises(ValueError, match="'fp16' is not one of"):
        precision.decide("fp16", True, "", "cpu")


def test_auto_is_the_default_and_fit_records_what_it_resolved(tmp_path):
    assert config_lib.load(None).run.precision == "auto"

    class Seen(Hooks):
        params = None

        def resolved(self, params):
            Seen.params = params

    cfg = tiny_config(tmp_path, **{"schedule.epochs": 1, "schedule.warmup_epochs": 0, "run.max_train_batches": 2})
    summary = fit(cfg, tmp_path / "r", hooks=Seen())
    want = precision.resolve("auto", torch.device("cpu"), warn=False)
    d = json.loads((tmp_path / "r" / "data.json").read_text())
    assert d["precision"]["requested"] == "auto" and d["precision"]["resolved"] == want.precision
    assert d["resolved"]["run.precision_resolved"] == want.precision == summary["resolved"]["run.precision_resolved"]
    assert Seen.params == d["resolved"] and d["resolved"]["data.pipeline_resolved"] in ("device", "loader")
