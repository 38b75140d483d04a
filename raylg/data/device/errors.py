"""Errors and warnings of the device pipeline."""

from __future__ import annotations

from ..errors import DataError


class DevicePipelineError(DataError):
    """data.pipeline: device refused (budget, unsupported augmentation, unequal image sizes)."""


class DevicePipelineWarning(UserWarning):
    """data.pipeline: auto fell back to the loader for a reason worth seeing."""


class Unsupported(DevicePipelineError):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


