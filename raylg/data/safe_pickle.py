"""A restricted Unpickler for the CIFAR python archives: numpy array reconstruction only.

The official files are Python 2 pickles of dicts holding bytes, lists, ints and one numpy
uint8 array. Any other global (a class, a function such as os.system) is refused before it
is looked up, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import pickle

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

from .errors import DataError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # how the official files say it
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # protocol 5 (files written by numpy itself)
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, where: str):
        super().__init__(file, encoding="bytes")
        self.where = where

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(f"{self.where}: refusing to unpickle global {module}.{name}; only numpy arrays "
                            "are allowed in a CIFAR batch file (is this file from the official archive?)") from None


def load_pickle(path) -> object:
    """Unpickle a CIFAR batch/meta file, allowing numpy arrays only; DataError names the file."""
    where = str(path)
    try:
        data = open(path, "rb").read()
    except OSError as e:
        raise DataError(f"cannot read {where!r}: {e}") from None
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), repr(where)).load()
    except DataError:
        raise
    except Exception as e:  # truncated or not a pickle at all
        raise DataError(f"{where!r} is not a readable pickle ({type(e).__name__}: {e}); "
                        "the archive may be corrupt, delete it and fetch it again") from None
