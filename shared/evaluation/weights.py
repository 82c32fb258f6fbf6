"""The metric networks' weight files, which the user has and points at (nothing is downloaded): where a file is, and
a state dict read through the project's weights-only loader (`shared.data.safe_pickle.safe_torch_load`)."""

from __future__ import annotations

from pathlib import Path


def weight_file(path: str | Path, name: str, published: str) -> Path:
    """`path` itself, or `path / name` when it is a folder; FileNotFoundError naming the file and where it is
    published when it is not there."""
    path = Path(path)
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found ({name}, published by {published})")
    return path


def state_dict(path: Path, network: str) -> dict:
    """The state dict in `path`; ValueError naming the file and the network expected when it cannot be read (a
    truncated or foreign file: unpickling errors of several kinds)."""
    from ..data.safe_pickle import safe_torch_load

    try:
        state = safe_torch_load(path)
    except Exception as e:
        raise ValueError(f"{path}: not a weights file torch can read ({type(e).__name__}): not {network}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not {network}'s state dict")
    return state
