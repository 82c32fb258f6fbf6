"""Real tools' formats (#36): LivePortrait templates aligned to a 29.97 fps picture, and the FLAME trackers' files.

Every fixture is written as its producer writes it (repository, commit, file and line in each docstring), never in a
format of ours."""

from __future__ import annotations

import pickle
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from shared.data.media import frame_times, iter_frames, write_mp4
from shared.data.motion import StructError, load_struct
from shared.data.trackers import flame, liveportrait

NTSC = Fraction(30000, 1001)


# LivePortrait (KwaiVGI/LivePortrait @ 1986663) -------------------------------------------------------------------


def lp_rotation(pitch, yaw, roll) -> np.ndarray:
    """src/utils/camera.py:31-73 `get_rotation_matrix` in numpy: degrees in, rot = Rz(roll) Ry(yaw) Rx(pitch),
    returned transposed (`rot.permute(0, 2, 1)`, a view: the stored array is Fortran-ordered, as in its pickles)."""
    x, y, z = (np.deg2rad(np.atleast_1d(a).astype(np.float32)) for a in (pitch, yaw, roll))
    o, n = np.ones_like(x), np.zeros_like(x)
    rx = np.stack([o, n, n, n, np.cos(x), -np.sin(x), n, np.sin(x), np.cos(x)], 1).reshape(-1, 3, 3)
    ry = np.stack([np.cos(y), n, np.sin(y), n, o, n, -np.sin(y), n, np.cos(y)], 1).reshape(-1, 3, 3)
    rz = np.stack([np.cos(z), -np.sin(z), n, np.sin(z), np.cos(z), n, n, n, o], 1).reshape(-1, 3, 3)
    return (rz @ ry @ rx).transpose(0, 2, 1)


def lp_template(frames: int, fps: int = 25, legacy: bool = False, seed: int = 0) -> dict:
    """A motion template as `make_motion_template` builds it (src/live_portrait_pipeline.py:41-75): n_frames and
    output_fps Python ints (`int(get_fps(...))`, :132), per frame float32 arrays with a batch axis in the order
    scale [1, 1], R [1, 3, 3], exp [1, 21, 3], t [1, 3], kp [1, 21, 3], x_s [1, 21, 3], then c_eyes_lst [1, 2] and
    c_lip_lst [1, 1] per frame (:69-73). `legacy`: the format before LivePortrait 24dcfaf (2024-07-19), which every
    human example it ships still uses and it still reads (:211, :313, :110-111): R_d, c_d_eyes_lst, c_d_lip_lst, no
    kp / x_s. Frame i's t_x is i (so a test can read which frame it got) and its angles are known."""
    g = np.random.default_rng(seed)
    f32 = lambda *s: g.standard_normal(s).astype(np.float32)  # noqa: E731
    pyr = pose_degrees(frames)
    motion = []
    for i in range(frames):
        t = np.array([[i, 0.1 * i, 0.0]], np.float32)  # LivePortrait's t_z is 0.0 in every shipped template
        r = lp_rotation(*pyr[i])
        if legacy:
            motion.append({"scale": np.float32([[1.3]]), "R_d": r, "exp": f32(1, 21, 3) * 0.01, "t": t})
        else:
            motion.append({"scale": np.float32([[1.3]]), "R": r, "exp": f32(1, 21, 3) * 0.01, "t": t,
                           "kp": f32(1, 21, 3), "x_s": f32(1, 21, 3)})
    eyes = [np.float32([[0.3, 0.28]]) * (i % 5 != 0) for i in range(frames)]
    lips = [np.float32([[1e-3 * i]]) for i in range(frames)]
    key = "c_d_" if legacy else "c_"
    return {"n_frames": frames, "output_fps": int(fps), "motion": motion, f"{key}eyes_lst": eyes, f"{key}lip_lst": lips}


def pose_degrees(frames: int) -> np.ndarray:
    """[frames, 3] pitch, yaw, roll in degrees, within LivePortrait's +-97.5 bins."""
    i = np.arange(frames)
    return np.stack([20 * np.sin(i / 7), 60 * np.sin(i / 11), 10 * np.cos(i / 5)], 1).astype(np.float32)


def index_video(path: Path, frames: int, fps) -> None:
    """A video whose frame i shows i in its colour (R = 12 (i // 16), G = 12 (i % 16): H.264 keeps it)."""
    i = np.arange(frames)
    rgb = np.zeros((frames, 32, 32, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = (i // 16 * 12)[:, None, None], (i % 16 * 12)[:, None, None]
    write_mp4(path, rgb, fps)


def shown(path: Path) -> np.ndarray:
    """The source frame index each 25 fps frame of `iter_frames` shows."""
    out = np.stack(list(iter_frames(path, 32)))
    return (np.round(out[:, 16, 16, 0] / 12) * 16 + np.round(out[:, 16, 16, 1] / 12)).astype(int)


def test_liveportrait_template_reads_its_angles_translation_and_ratios(tmp_path):
    """The struct vector holds what LivePortrait animates with: the motion extractor's pitch / yaw / roll (from its
    transposed R), t_x and t_y (t_z is unused by it), scale, exp and the eye / lip ratios; the legacy R_d format
    gives the same numbers."""
    for legacy in (False, True):
        p = tmp_path / f"t{legacy}.pkl"
        p.write_bytes(pickle.dumps(lp_template(12, legacy=legacy), protocol=4))  # io.py:115's default protocol
        assert lp_template(1, legacy=legacy)["motion"][0]["R_d" if legacy else "R"].flags.f_contiguous  # as LP's
        rows = liveportrait.read(p)
        col = {n: rows.values[:, k] for k, n in enumerate(rows.layout)}
        np.testing.assert_allclose(np.rad2deg(np.stack([col["pitch"], col["yaw"], col["roll"]], 1)),
                                   pose_degrees(12), atol=1e-3)
        np.testing.assert_array_equal(col["t_x"], np.arange(12))
        assert "t_z" not in col and "kp0_x" not in col and len(rows.layout) == 63 + 6 + 3
        np.testing.assert_allclose(col["lip"], 1e-3 * np.arange(12), rtol=1e-6)
        assert col["eye_l"][0] == 0 and col["eye_r"][1] == np.float32(0.28)


def test_an_ntsc_video_with_a_liveportrait_template_is_aligned_to_the_picture(tmp_path):
    """#36's first point: a 10 s video at 30000/1001 fps and its template as LivePortrait writes it (output_fps =
    int(29.97) = 29, R or the legacy R_d): at every 25 fps frame the motion is the one of the source frame the picture
    shows (0 frames apart over 10 s). Placing the template's rows at i / 29 would be 9 frames behind at the end."""
    video = tmp_path / "ntsc.mp4"
    index_video(video, 300, NTSC)
    picture = shown(video)
    assert len(picture) == 251 and picture[-1] == 299  # 300 frames of 1001 / 30000 s: 10.01 s
    for legacy in (False, True):
        video.with_suffix(".pkl").write_bytes(pickle.dumps(lp_template(300, fps=29, legacy=legacy), protocol=4))
        track = load_struct("liveportrait", video, len(picture), 29.97, frame_times(video))
        motion_frame = track.values[:, track.layout.index("t_x")].astype(int)
        assert np.abs(motion_frame - picture).max() == 0
        assert any("truncated" in n for n in track.notes)
    naive = np.minimum((np.arange(251) / 25 * 29).astype(int), 299)  # trusting output_fps
    assert picture[-1] - naive[-1] == 9


def test_a_template_of_another_rate_or_length_is_refused_by_name(tmp_path):
    video = tmp_path / "v.mp4"
    index_video(video, 60, NTSC)
    video.with_suffix(".pkl").write_bytes(pickle.dumps(lp_template(60, fps=25), protocol=4))
    with pytest.raises(StructError, match=r"v\.pkl: template made at output_fps=25 but the video runs at 29\.970"):
        load_struct("liveportrait", video, 50, 29.97, frame_times(video))
    video.with_suffix(".pkl").write_bytes(pickle.dumps(lp_template(40, fps=29), protocol=4))
    with pytest.raises(StructError, match="shorter than the video"):
        load_struct("liveportrait", video, 50, 29.97, frame_times(video))


# FLAME trackers --------------------------------------------------------------------------------------------------


def flame_motion(frames: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Known per-frame FLAME parameters (axis-angle rotations, radians)."""
    g = np.random.default_rng(seed)
    return {"exp": g.standard_normal((frames, 100)).astype(np.float32), "rot": 0.3 * g.uniform(-1, 1, (frames, 3)),
            "jaw": np.c_[0.2 * g.uniform(0, 1, frames), np.zeros((frames, 2))], "neck": 0.1 * g.uniform(-1, 1, (frames, 3)),
            "eyes": 0.2 * g.uniform(-1, 1, (frames, 6)), "eyelids": g.uniform(0, 1, (frames, 2)),
            "trans": 0.01 * g.standard_normal((frames, 3))}


def video_25fps(path: Path, frames: int) -> np.ndarray:
    index_video(path, frames, 25)
    return frame_times(path)


def test_vhap_tracked_flame_params(tmp_path):
    """ShenhanQian/VHAP @ 4b64ab7, vhap/model/tracker.py:1158-1218 (`save_result`, np.savez uncompressed): per-frame
    rotation / translation / neck_pose / jaw_pose [T, 3], eyes_pose [T, 6], expr [T, 100] (float32, axis-angle),
    shape [300], timestep_id [T] '<U6', n_processed_frames int64 0, image_size int64 [2], focal_length [1], lights
    [9, 3], static_offset [1, 5143, 3] and tex_extra [3, 2048, 2048] (50 MB; config/base.py:63-107 defaults); one file
    per evaluation, `tracked_flame_params_<epoch>.npz` (:1081, :1415: epochs 0, 10, 20, 30), frames at 25 fps
    (preprocess_video.py:150)."""
    n, m = 30, flame_motion(30)
    times = video_25fps(tmp_path / "v.mp4", n)
    run = tmp_path / "v.flame" / "2024-05-01_12-00-00"
    run.mkdir(parents=True)
    for epoch in (0, 10, 30):
        scale = 1.0 if epoch == 30 else 0.0  # the final file is the last epoch's
        np.savez(run / f"tracked_flame_params_{epoch}.npz", rotation=(scale * m["rot"]).astype(np.float32),
                 translation=m["trans"].astype(np.float32), neck_pose=m["neck"].astype(np.float32),
                 jaw_pose=m["jaw"].astype(np.float32), eyes_pose=m["eyes"].astype(np.float32),
                 shape=np.zeros(300, np.float32), expr=m["exp"], timestep_id=np.array([f"{i:06d}" for i in range(n)]),
                 n_processed_frames=np.int64(0), image_size=np.array([512, 512]), focal_length=np.float32([1.5]),
                 lights=np.zeros((9, 3), np.float32), static_offset=np.zeros((1, 5143, 3), np.float32),
                 tex_extra=np.zeros((3, 2048, 2048), np.float32) if epoch == 30 else np.zeros((3, 2, 2), np.float32))
    track = load_struct("flame", tmp_path / "v.mp4", n, 25.0, times)
    lay = track.layout
    assert lay[:2] == ["exp0", "exp1"] and lay[100:103] == ["rot_x", "rot_y", "rot_z"] and lay[-3:] == [
        "trans_x", "trans_y", "trans_z"] and "eye_r_z" in lay and len(lay) == 100 + 3 * 6
    np.testing.assert_allclose(track.values[:, 100:103], m["rot"], atol=1e-6)
    np.testing.assert_allclose(track.values[:, lay.index("eye_r_x")], m["eyes"][:, 3], atol=1e-6)


def _matrix_to_rotation_6d(m: np.ndarray) -> np.ndarray:
    """pytorch3d/transforms/rotation_conversions.py `matrix_to_rotation_6d`: the matrix's first two rows."""
    return m[..., :2, :].reshape(*m.shape[:-2], 6)


def test_metrical_tracker_checkpoints(tmp_path):
    """Zielon/metrical-tracker @ c2a5172, tracker.py:186-210 (`save_checkpoint`, torch.save at its default protocol
    2 of numpy arrays): checkpoint/{frame:05d}.frame = {'flame': {'exp' [1, 100], 'shape' [1, 300], 'tex' [1, 140],
    'sh' [1, 9, 3], 'eyes' [1, 12], 'eyelids' [1, 2], 'jaw' [1, 6]}, 'camera': {'R' [1, 6], 't' [1, 3], 'fl' [1, 1],
    'pp' [1, 2]}, 'opencv': {'R', 't', 'K'}, 'img_size', 'frame_id', 'global_step'}; rotations as pytorch3d's 6-D
    (tracker.py:285-296); the head's rotation in the camera's (X_view = X_world R + T, the look-at camera
    diag(-1, 1, -1) facing the head); 25 fps (datasets/generate_dataset.py:36)."""
    n, m = 12, flame_motion(12)
    times = video_25fps(tmp_path / "v.mp4", n)
    ck = tmp_path / "v.flame" / "output" / "actor" / "checkpoint"
    ck.mkdir(parents=True)
    f32 = np.float32
    for i in range(n):
        head = Rotation.from_rotvec(m["rot"][i]).as_matrix()
        cam_r = head.T @ flame.FRONTAL  # the camera that sees the fixed FLAME head rotated by `head`
        six = lambda v: _matrix_to_rotation_6d(Rotation.from_rotvec(v).as_matrix())  # noqa: E731
        frame = {"flame": {"exp": m["exp"][i][None], "shape": np.zeros((1, 300), f32), "tex": np.zeros((1, 140), f32),
                           "sh": np.zeros((1, 9, 3), f32),
                           "eyes": np.concatenate([six(m["eyes"][i, :3]), six(m["eyes"][i, 3:])])[None].astype(f32),
                           "eyelids": m["eyelids"][i][None].astype(f32), "jaw": six(m["jaw"][i])[None].astype(f32)},
                 "camera": {"R": _matrix_to_rotation_6d(cam_r)[None].astype(f32), "t": m["trans"][i][None].astype(f32),
                            "fl": f32([[9.8]]), "pp": np.zeros((1, 2), f32)},
                 "opencv": {"R": np.eye(3, dtype=f32)[None], "t": np.zeros((1, 3), f32), "K": np.eye(3, dtype=f32)[None]},
                 "img_size": np.array([512, 512]), "frame_id": f"{i:05d}", "global_step": 100 * i}
        torch.save(frame, ck / f"{i:05d}.frame")
    track = load_struct("flame", tmp_path / "v.mp4", n, 25.0, times)
    v = {name: track.values[:, k] for k, name in enumerate(track.layout)}
    np.testing.assert_allclose(np.stack([v["rot_x"], v["rot_y"], v["rot_z"]], 1), m["rot"], atol=1e-5)
    np.testing.assert_allclose(v["jaw_x"], m["jaw"][:, 0], atol=1e-5)
    np.testing.assert_allclose(np.stack([v["eye_r_x"], v["eye_r_y"], v["eye_r_z"]], 1), m["eyes"][:, 3:], atol=1e-5)
    np.testing.assert_allclose(v["eyelid_r"], m["eyelids"][:, 1], atol=1e-6)
    assert "neck_x" not in v and track.layout[-1] == "trans_z"


def test_a_metrical_checkpoint_that_runs_code_is_refused(tmp_path):
    ck = tmp_path / "v.flame" / "checkpoint"
    ck.mkdir(parents=True)
    torch.save({"flame": {"exp": Path("x")}}, ck / "00000.frame")  # a class global: weights-only refuses it
    with pytest.raises(StructError, match=r"00000\.frame: not a metrical-tracker checkpoint"):
        flame.read(tmp_path / "v.flame")


def test_emoca_codes_with_missing_and_second_faces(tmp_path):
    """radekd91/emoca @ fef5472, gdl_apps/EMOCA/utils/io.py:62-74 (`save_codes`: np.save of shape [100], exp [50],
    tex [50], pose [6], detail [128], float32, no batch axis) into one folder per detected face named
    <frame %06d>_<detection %03d> (FaceDataModuleBase.py:241-255, frames numbered from 1 by ffmpeg); a frame without
    a face has no folder, a frame with two faces has two."""
    n, m = 10, flame_motion(10)
    times = video_25fps(tmp_path / "v.mp4", n)
    out = tmp_path / "v.flame" / "EMOCA_v2_lr_mse_20" / "processed_2024_May_01_12-00-00" / "v" / "results" / "EMOCA_v2_lr_mse_20"
    for i in range(n):
        if i in (3, 4):
            continue  # no face found
        for det in ((0, 1) if i == 2 else (0,)):
            d = out / f"{i + 1:06d}_{det:03d}"
            d.mkdir(parents=True)
            pose = np.r_[m["rot"][i], m["jaw"][i]].astype(np.float32) + det  # a second face: other numbers
            for name, a in (("shape", np.zeros(100)), ("exp", m["exp"][i, :50]), ("tex", np.zeros(50)),
                            ("pose", pose), ("detail", np.zeros(128))):
                np.save(d / f"{name}.npy", np.asarray(a, np.float32))
    track = load_struct("flame", tmp_path / "v.mp4", n, 25.0, times)
    assert track.layout[50:56] == ["rot_x", "rot_y", "rot_z", "jaw_x", "jaw_y", "jaw_z"] and len(track.layout) == 56
    keep = [0, 1, 2, 5, 6, 7, 8, 9]
    np.testing.assert_allclose(track.values[keep, 50:53], m["rot"][keep], atol=1e-6)
    np.testing.assert_allclose(track.values[3, 50:53], m["rot"][2] + (m["rot"][5] - m["rot"][2]) / 3, atol=1e-6)
    assert any("2 of 10 frames had no face" in note for note in track.notes)


def test_smirk_and_deca_outputs_stacked_over_frames(tmp_path):
    """SMIRK (georgeretsi/smirk @ c7de404) and DECA (yfeng95/DECA @ a11554a) write no parameter file; what a user
    saves is their encoders' outputs stacked over the video's frames: SMIRK's src/smirk_encoder.py:123-133
    (expression_params [B, 50], pose_params [B, 3], jaw_params [B, 3], eyelid_params [B, 2], cam [B, 3],
    shape_params [B, 300]) and DECA's codedict (decalib/deca.py:139-158: shape [B, 100], tex [B, 50], exp [B, 50],
    pose [B, 6] = global + jaw axis-angle, cam [B, 3], light [B, 9, 3], detail [B, 128])."""
    n, m = 10, flame_motion(10)
    times = video_25fps(tmp_path / "v.mp4", n)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    np.savez(tmp_path / "v.flame.npz", expression_params=f32(m["exp"][:, :50]), pose_params=f32(m["rot"]),
             jaw_params=f32(m["jaw"]), eyelid_params=f32(m["eyelids"]), cam=f32(np.c_[np.full(n, 7.0), m["trans"][:, :2]]),
             shape_params=np.zeros((n, 300), np.float32))
    smirk = load_struct("flame", tmp_path / "v.mp4", n, 25.0, times)
    assert smirk.layout[50:] == ["rot_x", "rot_y", "rot_z", "jaw_x", "jaw_y", "jaw_z", "eyelid_l", "eyelid_r",
                                 "cam_s", "cam_tx", "cam_ty"]
    np.testing.assert_allclose(smirk.values[:, 50:53], m["rot"], atol=1e-6)
    np.savez(tmp_path / "v.flame.npz", shape=np.zeros((n, 100), np.float32), tex=np.zeros((n, 50), np.float32),
             exp=f32(m["exp"][:, :50]), pose=f32(np.c_[m["rot"], m["jaw"]]), cam=f32(np.c_[np.full(n, 9.0), m["trans"][:, :2]]),
             light=np.zeros((n, 9, 3), np.float32), detail=np.zeros((n, 128), np.float32))
    deca = load_struct("flame", tmp_path / "v.mp4", n, 25.0, times)
    assert deca.layout == smirk.layout[:56] + ["cam_s", "cam_tx", "cam_ty"]
    np.testing.assert_allclose(deca.values[:, 53], m["jaw"][:, 0], atol=1e-6)


def test_a_six_d_rotation_is_never_read_as_axis_angle(tmp_path):
    """pytorch3d's 6-D form -> matrix -> axis-angle gives back the rotation (the old reader took a 6-D `pose` for
    global + jaw axis-angle)."""
    rv = np.random.default_rng(1).uniform(-1, 1, (50, 3))
    got = flame.axis_angle(flame.rotation_6d_to_matrix(_matrix_to_rotation_6d(Rotation.from_rotvec(rv).as_matrix())))
    np.testing.assert_allclose(got, rv, atol=1e-6)
    (tmp_path / "v.flame.npz").write_bytes(b"")
    with pytest.raises(StructError, match=r"v\.flame\.npz: cannot read FLAME parameters"):
        flame.read(tmp_path / "v.flame.npz")
    np.savez(tmp_path / "w.flame.npz", expr_params=np.zeros((3, 50)))
    with pytest.raises(StructError, match=r"not a FLAME tracker's output \(has \['expr_params'\]"):
        flame.read(tmp_path / "w.flame.npz")
