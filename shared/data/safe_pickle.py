"""Reading pickles from dataset folders without running code: LivePortrait's motion templates (plain `pickle`) and
metrical-tracker's per-frame checkpoints (`torch.save`) hold only dicts, lists, numbers, strings and numpy arrays, so
nothing else is let in. A crafted pickle that names any other global (os.system, a class) is refused by that name
before anything is called."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np

# The globals a pickled LivePortrait template refers to: numpy arrays, their dtypes and numpy scalars, as numpy 1.x
# (numpy.core) and 2.x (numpy._core) pickle them at protocols 2-5 (LivePortrait's src/utils/io.py `dump` pickles a
# dict of lists of float32 arrays and ints). Containers and numbers are pickle opcodes, not globals.
SAFE_GLOBALS = frozenset({("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
                          ("_codecs", "encode")} | {
    (f"numpy.{core}.{module}", name) for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))})


def _plain_dtype(*args):
    """numpy.dtype for a pickle: an object dtype (arrays of arbitrary pickled objects) is refused."""
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError("an array of Python objects (dtype object)")
    return dt


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for bytes (Python 2 compatible): latin-1 only."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"bytes in encoding {encoding!r}")
    return text.encode("latin1")


class SafeUnpickler(pickle.Unpickler):
    """Unpickles only containers, numbers, strings and numpy arrays: a pickle that names any other global (a
    function such as os.system, a class) is refused by that name before anything is called."""

    def find_class(self, module: str, name: str):
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} (a LivePortrait template holds only "
                                         f"dicts, lists, numbers and numpy arrays)")
        if (module, name) == ("numpy", "dtype"):
            return _plain_dtype
        if module == "_codecs":
            return _latin1
        return getattr(importlib.import_module(module), name)


def safe_load_pickle(path: Path):
    with open(path, "rb") as f:
        obj = SafeUnpickler(f).load()
    _plain(obj)
    return obj


def _plain(obj) -> None:
    """Every array in a loaded template holds numbers (booleans, integers, floats, complex): a dtype's pickled state
    can still describe other kinds, which are refused here."""
    if isinstance(obj, dict):
        for v in obj.values():
            _plain(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _plain(v)
    elif isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in "biufc":
        raise pickle.UnpicklingError(f"an array of dtype {obj.dtype} (only numbers are read)")


def safe_torch_load(path: Path):
    """A `torch.save` file of numpy arrays, numbers and strings (metrical-tracker's `.frame`, written at
    torch.save's default protocol 2 under numpy 1.x or 2.x), through torch's weights-only unpickler with numpy's
    array globals allowed; anything else (a tensor subclass, a function) is refused by torch."""
    import torch

    from numpy import dtypes

    recon = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
    allowed = [np.ndarray, np.dtype, recon._reconstruct, (recon._reconstruct, "numpy.core.multiarray._reconstruct"),
               (recon._reconstruct, "numpy._core.multiarray._reconstruct")]
    allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and n != "ObjectDType"]
    with torch.serialization.safe_globals(allowed):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    _plain(obj)
    return obj
