"""FLAME parameters as face trackers write them, put in one canonical layout.

Beside `X.mp4` sits `X.flame.npz` (a file) or `X.flame/` (a tracker's output folder, as it wrote it). What each
tracker really writes (sources read at the commits named; file:line there):
- **VHAP** (ShenhanQian/VHAP 4b64ab7): `tracked_flame_params_<epoch>.npz` (vhap/model/tracker.py:1158-1218, one per
  evaluation; the largest epoch is the final one) with `expr` [T, 100], `rotation`, `neck_pose`, `jaw_pose`,
  `translation` [T, 3], `eyes_pose` [T, 6], all axis-angle, `shape` [300] (identity, unused), on frames extracted at
  25 fps (preprocess_video.py:150).
- **metrical-tracker** (Zielon/metrical-tracker c2a5172): `checkpoint/NNNNN.frame`, one `torch.save` dict of numpy
  arrays per frame (tracker.py:186-210): `flame` {`exp` [1, 100], `jaw` [1, 6], `eyes` [1, 12], `eyelids` [1, 2],
  ...} and `camera` {`R` [1, 6], `t` [1, 3], ...}; rotations in pytorch3d's 6-D form (the first two rows of the
  matrix), the head's rigid motion in the camera (FLAME's own rotation stays identity); frames at 25 fps
  (datasets/generate_dataset.py:36) counted from the first kept image (`begin_frames`, 0 assumed).
- **EMOCA** (radekd91/emoca fef5472, `test_emoca_on_video.py --save_codes True`): one folder per detected face,
  `<frame %06d>_<detection %03d>/` with `exp.npy` [50] and `pose.npy` [6] (global 3 + jaw 3, axis-angle;
  gdl_apps/EMOCA/utils/io.py:62-74); frames numbered from 1 at the video's own rate; frames without a face have no
  folder (filled here by interpolation and reported); the first detection of a frame is used.
- **SMIRK** (georgeretsi/smirk c7de404) writes no parameter file (its demos write a video or an image). Its encoder
  returns `expression_params` [B, 50], `pose_params` [B, 3], `jaw_params` [B, 3], `eyelid_params` [B, 2], `cam` [B, 3]
  (src/smirk_encoder.py:123-133), one frame at a time over every frame of the video (demo_video.py:107-139): read
  here as those names stacked over frames in `X.flame.npz`.
- **DECA** (yfeng95/DECA a11554a) writes no parameter file either (`--saveMat` saves meshes and renders); its
  codedict (decalib/deca.py:139-158) stacked over the video's frames, `exp` [T, 50], `pose` [T, 6] (global 3 + jaw 3,
  axis-angle), optional `cam` [T, 3], in `X.flame.npz`; optional `fps` when the frames were not every frame.

The canonical layout, in this order, each group present when the tracker gives it: `exp0..` (expression
coefficients), `rot_x, rot_y, rot_z` (head rotation, axis-angle, relative to facing the camera), `jaw_*`, `neck_*`,
`eye_l_*`, `eye_r_*` (axis-angle; named by FLAME's joint order, the first eye joint "left", whatever a tracker
calls it: metrical-tracker names its first 6-D block `right_eye`), `eyelid_l`, `eyelid_r`, then the head's
position: `trans_x, trans_y, trans_z` (VHAP's translation; metrical-tracker's camera translation, pytorch3d view
coordinates) or `cam_s, cam_tx, cam_ty` (SMIRK's and DECA's weak-perspective camera). Every rotation is converted to
axis-angle; a dataset mixes no trackers (ingest refuses a layout that differs from the cache's)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from ..safe_pickle import safe_torch_load
from . import Rows, StructError, fill_missing

FRONTAL = np.diag([-1.0, 1.0, -1.0])
"""pytorch3d's look-at rotation of a camera on +z looking at the origin (`look_at_view_transform` defaults), the
camera metrical-tracker starts from: a head facing it has no rotation."""


def rotation_6d_to_matrix(d6: np.ndarray) -> np.ndarray:
    """[..., 6] -> [..., 3, 3], pytorch3d's convention (Zhou et al. 2019, Gram-Schmidt on the two 3-vectors, which
    become the matrix's first two rows)."""
    a1, a2 = d6[..., :3].astype(np.float64), d6[..., 3:].astype(np.float64)
    b1 = a1 / np.linalg.norm(a1, axis=-1, keepdims=True)
    b2 = a2 - (b1 * a2).sum(-1, keepdims=True) * b1
    b2 = b2 / np.linalg.norm(b2, axis=-1, keepdims=True)
    return np.stack([b1, b2, np.cross(b1, b2)], axis=-2)


def axis_angle(matrices: np.ndarray) -> np.ndarray:
    """[N, 3, 3] rotation matrices (acting on column vectors) -> [N, 3] axis-angle."""
    return Rotation.from_matrix(matrices).as_rotvec().astype(np.float32)


def _names(group: str, n: int) -> list[str]:
    return [f"{group}{k}" for k in range(n)] if group == "exp" else [f"{group}_{a}" for a in "xyz"[:n]]


GROUPS = ("exp", "rot", "jaw", "neck", "eye_l", "eye_r", "eyelids", "trans", "cam")
NAMES = {"eyelids": ["eyelid_l", "eyelid_r"], "cam": ["cam_s", "cam_tx", "cam_ty"]}


def canonical(path: Path, parts: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """The groups a tracker gave, [T, n] each, in the canonical order -> (values [T, D], layout)."""
    t = {len(v) for v in parts.values()}
    if len(t) != 1:
        raise StructError(f"{path}: per-frame fields of different lengths: "
                          + ", ".join(f"{k} {len(v)}" for k, v in parts.items()))
    values, layout = [], []
    for g in GROUPS:
        if g in parts:
            v = np.asarray(parts[g], np.float32).reshape(len(parts[g]), -1)
            values.append(v)
            layout += NAMES.get(g, _names(g, v.shape[1]))
    return np.concatenate(values, 1), layout


def _need(path: Path, z: dict, shapes: dict[str, int | None]) -> None:
    """Each key present, [T, n] (n None: any width), one T for all."""
    missing = [k for k in shapes if k not in z]
    if missing:
        raise StructError(f"{path}: missing {missing} (has {sorted(z)})")
    for k, n in shapes.items():
        a = np.asarray(z[k])
        if a.ndim != 2 or (n is not None and a.shape[1] != n):
            raise StructError(f"{path}: '{k}' is {list(a.shape)}, expected [T, {n if n is not None else 'E'}]")


def vhap(path: Path) -> Rows:
    """VHAP's tracked_flame_params_<epoch>.npz (rows at 25 fps)."""
    with np.load(path) as npz:  # only the motion's keys: VHAP's file also holds a 50 MB texture
        z = {k: npz[k] for k in ("expr", "rotation", "jaw_pose", "neck_pose", "eyes_pose", "translation") if k in npz}
    _need(path, z, {"expr": None, "rotation": 3, "jaw_pose": 3, "neck_pose": 3, "eyes_pose": 6, "translation": 3})
    eyes = z["eyes_pose"]
    values, layout = canonical(path, {"exp": z["expr"], "rot": z["rotation"], "jaw": z["jaw_pose"],
                                      "neck": z["neck_pose"], "eye_l": eyes[:, :3], "eye_r": eyes[:, 3:],
                                      "trans": z["translation"]})
    return Rows(values, layout, fps=25.0)


def smirk(path: Path, z: dict) -> Rows:
    """SMIRK's encoder outputs stacked over the video's frames."""
    _need(path, z, {"expression_params": None, "pose_params": 3, "jaw_params": 3})
    parts = {"exp": z["expression_params"], "rot": z["pose_params"], "jaw": z["jaw_params"]}
    if "eyelid_params" in z:
        parts["eyelids"] = z["eyelid_params"]
    if "cam" in z:
        parts["cam"] = z["cam"]
    values, layout = canonical(path, parts)
    return Rows(values, layout, frames=np.arange(len(values)))


def deca(path: Path, z: dict) -> Rows:
    """DECA's codedict stacked over the video's frames (or at its `fps`)."""
    _need(path, z, {"exp": None, "pose": None})
    if z["pose"].shape[1] != 6:
        raise StructError(f"{path}: 'pose' is {list(z['pose'].shape)}: DECA's codedict pose is [T, 6] (global 3 + "
                          f"jaw 3, axis-angle)")
    parts = {"exp": z["exp"], "rot": z["pose"][:, :3], "jaw": z["pose"][:, 3:]}
    if "cam" in z:
        parts["cam"] = z["cam"]
    values, layout = canonical(path, parts)
    if "fps" in z:
        return Rows(values, layout, fps=float(z["fps"]))
    return Rows(values, layout, frames=np.arange(len(values)))


def emoca(folder: Path, found: list[Path]) -> Rows:
    """`found`: every exp.npy under the folder; their parents are named <frame>_<detection>."""
    by_frame: dict[int, Path] = {}
    for exp in sorted(found):
        m = re.fullmatch(r"(\d+)_(\d+)", exp.parent.name)
        if m is None:
            raise StructError(f"{exp.parent}: EMOCA names a face's folder <frame>_<detection> (e.g. 000001_000)")
        by_frame.setdefault(int(m.group(1)) - 1, exp.parent)  # ffmpeg numbers frames from 1; first detection
    frames = np.array(sorted(by_frame))
    rows = []
    for f in frames:
        d = by_frame[f]
        try:
            exp, pose = np.load(d / "exp.npy"), np.load(d / "pose.npy")
        except (OSError, ValueError) as e:
            raise StructError(f"{d}: cannot read exp.npy / pose.npy ({e})") from e
        if pose.shape != (6,):
            raise StructError(f"{d / 'pose.npy'}: shape {list(pose.shape)}, EMOCA writes [6]")
        rows.append(np.concatenate([exp.reshape(-1), pose]))
    v = np.stack(rows).astype(np.float32)
    e = v.shape[1] - 6
    values, layout = canonical(folder, {"exp": v[:, :e], "rot": v[:, e : e + 3], "jaw": v[:, e + 3 :]})
    values, frames, notes = fill_missing(values, frames, f"{folder.name} (EMOCA)")
    return Rows(values, layout, frames=frames, notes=notes, hold_end=True)


def metrical(folder: Path, found: list[Path]) -> Rows:
    """`found`: the checkpoint/*.frame files, one per frame, numbered from 0."""
    odd = [p.name for p in found if not p.stem.isdigit()]
    if odd:
        raise StructError(f"{folder}: metrical-tracker names checkpoints NNNNN.frame, not {odd[:3]}")
    found = sorted(found, key=lambda p: int(p.stem))
    rows = []
    for p in found:
        try:
            d = safe_torch_load(p)
            fl, cam = d["flame"], d["camera"]
            rows.append({k: np.asarray(v, np.float64).reshape(-1) for k, v in (
                ("exp", fl["exp"]), ("jaw", fl["jaw"]), ("eyes", fl["eyes"]), ("eyelids", fl["eyelids"]),
                ("R", cam["R"]), ("t", cam["t"]))})
        except Exception as e:  # noqa: BLE001  (torch's unpickler, a missing key: each names the file)
            raise StructError(f"{p}: not a metrical-tracker checkpoint ({type(e).__name__}: {e})") from e
    if [int(p.stem) for p in found] != list(range(len(found))):
        raise StructError(f"{folder}: checkpoint frames are not 00000..{len(found) - 1:05d} without gaps")
    stack = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    head = FRONTAL @ np.swapaxes(rotation_6d_to_matrix(stack["R"]), 1, 2)  # camera R = head^T R0 (row vectors)
    eyes = stack["eyes"]
    values, layout = canonical(folder, {
        "exp": stack["exp"], "rot": axis_angle(head), "jaw": axis_angle(rotation_6d_to_matrix(stack["jaw"])),
        "eye_l": axis_angle(rotation_6d_to_matrix(eyes[:, :6])),
        "eye_r": axis_angle(rotation_6d_to_matrix(eyes[:, 6:])),
        "eyelids": stack["eyelids"], "trans": stack["t"]})
    return Rows(values, layout, fps=25.0)


FORMATS = ("VHAP tracked_flame_params_*.npz; metrical-tracker checkpoint/*.frame; EMOCA <frame>_<det>/exp.npy + "
           "pose.npy; SMIRK expression_params/pose_params/jaw_params; DECA exp/pose")


def read(path: Path, video_fps: float | None = None) -> Rows:
    """A FLAME file or tracker folder -> rows in the canonical layout (StructError names the file and problem)."""
    if path.is_dir():
        return _folder(path)
    try:
        with np.load(path) as npz:
            keys = set(npz.files)
            if "expr" in keys and "rotation" in keys:
                return vhap(path)
            z = {k: npz[k] for k in keys}
    except StructError:
        raise
    except Exception as e:  # noqa: BLE001
        raise StructError(f"{path}: cannot read FLAME parameters ({type(e).__name__}: {e})") from e
    if "expression_params" in z:
        return smirk(path, z)
    if "exp" in z and "pose" in z:
        return deca(path, z)
    raise StructError(f"{path}: not a FLAME tracker's output (has {sorted(z)}; read: {FORMATS})")


def _folder(folder: Path) -> Rows:
    vh = sorted(folder.rglob("tracked_flame_params*.npz"),
                key=lambda p: (str(p.parent), int(m.group(1)) if (m := re.search(r"_(\d+)$", p.stem)) else -1))
    if vh:  # the last evaluation of the last run (VHAP writes _0, _10, ... into a timestamped folder per run)
        rows = vhap(vh[-1])
        rows.notes.append(f"{folder.name}: VHAP parameters from {vh[-1].relative_to(folder)}")
        return rows
    frames = sorted(folder.rglob("checkpoint/*.frame"))
    if frames:
        return metrical(folder, frames)
    exps = [p for p in folder.rglob("exp.npy") if (p.parent / "pose.npy").exists()]
    runs = sorted({p.parent.parent for p in exps})
    if len(runs) > 1:
        names = ", ".join(str(r.relative_to(folder)) for r in runs[:3])
        raise StructError(f"{folder}: EMOCA results from {len(runs)} runs ({names}); keep one")
    if exps:
        return emoca(folder, exps)
    raise StructError(f"{folder}: no FLAME tracker output inside (looked for {FORMATS})")
