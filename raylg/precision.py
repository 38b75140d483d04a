"""run.precision: which autocast a run uses, following the hardware.

    fp32   no autocast
    bf16   bf16 autocast, whatever the hardware (warns where it is emulated: much slower)
    auto   bf16 autocast where the device computes bf16 natively, else fp32 (the default)

Native bf16: on CUDA, a device whose compute capability has bf16 (Ampere, sm_80, and later:
``torch.cuda.is_bf16_supported(including_emulation=False)``); on a CPU, the AVX512-BF16 or AMX-BF16
instructions (``avx512_bf16`` / ``amx_bf16`` among the flags of /proc/cpuinfo). Without them
PyTorch's CPU autocast still runs bf16 matmuls, by conversion, and a DeiT-Ti step measured ~10x
slower than fp32 (AMD EPYC with AVX2 only: 26.7 s vs 2.4 s per step at batch 32); with
AVX512-BF16 the same step is ~1.33x faster than fp32. Other devices (mps, xpu, ...) resolve
``auto`` to fp32.

The resolved value is what the engine sees; fit() records it (data.json, summary.json) with
the reason, so a run on an unknown machine says what it did.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

NATIVE_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CHOICES = ("auto", "fp32", "bf16")


class PrecisionWarning(UserWarning):
    """bf16 asked for where it is emulated."""


@dataclass(frozen=True)
class Resolved:
    requested: str  # the config's value
    precision: str  # "fp32" | "bf16": what autocast does
    native_bf16: bool  # the device computes bf16 natively
    why: str  # one line: the device and the evidence

    def as_dict(self) -> dict:
        return {"requested": self.requested, "resolved": self.precision, "native_bf16": self.native_bf16, "why": self.why}


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> set[str]:
    """The flags of the first processor in /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 | arm
            return set(value.split())
    return set()


def cpu_native(flags: set[str]) -> tuple[bool, str]:
    """(native bf16, the evidence) for a CPU with these /proc/cpuinfo flags."""
    have = [f for f in NATIVE_CPU_FLAGS if f in flags]
    if have:
        return True, f"cpu flags {' '.join(have)}"
    if not flags:
        return False, "cpu: no /proc/cpuinfo flags to read"
    return False, f"cpu without {' or '.join(NATIVE_CPU_FLAGS)} in /proc/cpuinfo"


def cuda_native(name: str, capability: tuple[int, int]) -> tuple[bool, str]:
    """(native bf16, the evidence) for a CUDA device: bf16 tensor cores from sm_80 (Ampere) on, what
    torch.cuda.is_bf16_supported(including_emulation=False) tests."""
    major, minor = capability
    ok = major >= 8
    return ok, f"cuda {name} (sm_{major}{minor}){'' if ok else ': no native bf16 before sm_80'}"


@functools.lru_cache(maxsize=None)
def _this_cpu() -> tuple[bool, str]:
    return cpu_native(cpu_flags())


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(does device compute bf16 natively, the evidence in a few words)."""
    device = torch.device(device)
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return cuda_native(torch.cuda.get_device_name(idx), torch.cuda.get_device_capability(idx))
    if device.type == "cpu":
        return _this_cpu()
    return False, f"{device.type}: bf16 autocast not enabled by raylg on this device type"


def decide(requested: str, native: bool, why: str, device_type: str = "cpu", *, warn: bool = True) -> Resolved:
    """The precision for `requested` on a device whose native bf16 is `native` (`why`: the evidence)."""
    if requested not in CHOICES:
        raise ValueError(f"run.precision: {requested!r} is not one of {', '.join(map(repr, CHOICES))}")
    if requested == "fp32":
        return Resolved(requested, "fp32", native, why)
    if requested == "auto":
        return Resolved(requested, "bf16" if native else "fp32", native, why)
    if not native and warn:
        cost = ("on a CPU without AVX512-BF16/AMX, PyTorch emulates bf16 matmuls: a DeiT-Ti step measured ~10x slower "
                "than fp32 (26.7 s vs 2.4 s at batch 32)" if device_type == "cpu"
                else "bf16 is emulated here and slower than fp32")
        warnings.warn(f"run.precision is 'bf16' but {why}; {cost}. Use run.precision: auto (bf16 only where it is native) "
                      "or fp32", PrecisionWarning, stacklevel=3)
    return Resolved(requested, "bf16", native, why)


def resolve(requested: str, device: torch.device, *, warn: bool = True) -> Resolved:
    """The precision a run uses on device. ``bf16`` where it is emulated warns (PrecisionWarning)."""
    ok, why = native_bf16(device)
    return decide(requested, ok, why, torch.device(device).type, warn=warn)


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision ("auto" must be resolved first)."""
    import contextlib

    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    if precision == "auto":
        raise ValueError("precision 'auto' must be resolved for a device first (raylg.precision.resolve)")
    return contextlib.nullcontext()
