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


# SHA-256 of the published files. Not measured here (this machine cannot download them): each is the value several
# independent projects pin for the file at the address docs/metrics.md gives (pytorch-fid's also starts with the
# 8 hex digits its name carries); `python -m shared.evaluation.benchmark` reports whether yours match.
PUBLISHED_SHA256 = {
    "pt_inception-2015-12-05-6726825d.pth": "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    "i3d_torchscript.pt": "bec6519f66ea534e953026b4ae2c65553c17bf105611c746d904657e5860a5e2",
    "syncnet_v2.model": "961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442",
    "1k3d68.onnx": "df5c06b8a0c12e422b2ed8947b8869faa4105387f199c477af038aa01f9a45cc",
    "w600k_r50.onnx": "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
}


def sha256_of(path: str | Path) -> str:
    """The file's SHA-256, read in 1 MiB pieces (`hashlib.file_digest` needs Python 3.11; the project runs on 3.10)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return h.hexdigest()


def provenance(weights: str | Path, names: list[str]) -> dict[str, dict]:
    """For each of `names` present (in the folder `weights`, or `weights` itself when it is that file): its SHA-256
    and whether it is the published file's."""
    weights, out = Path(weights), {}
    for name in names:
        path = weights / name if weights.is_dir() else weights
        if path.is_file() and path.name == name:
            digest = sha256_of(path)
            out[name] = {"sha256": digest, "published": digest == PUBLISHED_SHA256.get(name)}
    return out
