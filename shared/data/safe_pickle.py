"""Reading pickles from dataset folders without running code: LivePortrait's motion templates (plain `pickle`) and
metrical-tracker's per-frame checkpoints (`torch.save`) hold only dicts, lists, numbers, strings and numpy arrays, so
nothing else is let in. A crafted pickle that names any other global (os.system, a class) is refused by that name
before anything is called."""

from __future__ import annotations

import importlib
import pickle
import re
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


def _inert(name: str) -> type:
    """A stand-in for a class a checkpoint pickles (its state kept as attributes, none of its code)."""
    def setstate(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})

    return type(name.rpartition(".")[2], (), {"__setstate__": setstate, "__module__": name.rpartition(".")[0]})


def safe_torch_load(path: Path, inert: tuple[str, ...] = ()):
    """A `torch.save` file through torch's weights-only unpickler: tensors, containers, numbers, strings, numpy
    arrays (metrical-tracker's `.frame`: numpy 1.x or 2.x at torch.save's protocol 2) and argparse.Namespace; a
    class whose module starts with one of `inert` (fairseq's `Dictionary` in its checkpoints) is let in as an inert
    attribute bag. Those classes are learnt from the unpickler's refusals (it names the global), which works for
    the zip and the legacy (torch < 1.6) format alike. Anything else (a function, another class) raises
    pickle.UnpicklingError naming it, before anything is called."""
    import argparse

    import torch
    from numpy import dtypes

    recon = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
    allowed = [argparse.Namespace, np.ndarray, np.dtype, recon._reconstruct,
               (recon._reconstruct, "numpy.core.multiarray._reconstruct"),
               (recon._reconstruct, "numpy._core.multiarray._reconstruct")]
    allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and n != "ObjectDType"]
    stand_ins: dict[str, tuple] = {}
    while True:
        try:
            with torch.serialization.safe_globals([*allowed, *stand_ins.values()]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
            break
        except pickle.UnpicklingError as e:
            m = re.search(r"GLOBAL ([\w.]+)", str(e))
            name = m.group(1) if m else None
            if name is None or not name.startswith(inert) or name in stand_ins or not inert:
                raise
            stand_ins[name] = (_inert(name), name)
    _plain(obj)
    return obj
