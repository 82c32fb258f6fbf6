"""Real tools' formats (#36): LivePortrait templates aligned to a 29.97 fps picture, and the FLAME trackers' files.

Every fixture is written as its producer writes it (repository, commit, file and line in each docstring), never in a
format of ours."""

from __future__ import annotations

import math
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
from tests.formats import lp_template, pose_degrees

NTSC = Fraction(30000, 1001)


# LivePortrait (KwaiVGI/LivePortrait @ 1986663) -------------------------------------------------------------------


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
            "jaw": np.c_[0.2 * g.uniform(0, 1, frames), np.zeros((frames, 2))],
            "neck": 0.1 * g.uniform(-1, 1, (frames, 3)),
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
                 "opencv": {"R": np.eye(3, dtype=f32)[None], "t": np.zeros((1, 3), f32),
                            "K": np.eye(3, dtype=f32)[None]},
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
    model = "EMOCA_v2_lr_mse_20"
    out = tmp_path / "v.flame" / model / "processed_2024_May_01_12-00-00" / "v" / "results" / model
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
             jaw_params=f32(m["jaw"]), eyelid_params=f32(m["eyelids"]),
             cam=f32(np.c_[np.full(n, 7.0), m["trans"][:, :2]]),
             shape_params=np.zeros((n, 300), np.float32))
    smirk = load_struct("flame", tmp_path / "v.mp4", n, 25.0, times)
    assert smirk.layout[50:] == ["rot_x", "rot_y", "rot_z", "jaw_x", "jaw_y", "jaw_z", "eyelid_l", "eyelid_r",
                                 "cam_s", "cam_tx", "cam_ty"]
    np.testing.assert_allclose(smirk.values[:, 50:53], m["rot"], atol=1e-6)
    np.savez(tmp_path / "v.flame.npz", shape=np.zeros((n, 100), np.float32), tex=np.zeros((n, 50), np.float32),
             exp=f32(m["exp"][:, :50]), pose=f32(np.c_[m["rot"], m["jaw"]]),
             cam=f32(np.c_[np.full(n, 9.0), m["trans"][:, :2]]),
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


# Speech encoders from the files users have -------------------------------------------------------------------------

TINY_W2V = dict(extractor_mode="group_norm",
                extractor_conv_layer_config=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,
                extractor_conv_bias=False, encoder_embed_dim=48, encoder_projection_dropout=0.0,
                encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=4,
                encoder_attention_dropout=0.0, encoder_ff_interm_features=96, encoder_ff_interm_dropout=0.0,
                encoder_dropout=0.0, encoder_layer_norm_first=False, encoder_layer_drop=0.0, aux_num_out=None)
"""A small HuBERT-base-shaped network (the real ones are 95-960 M parameters: too large to write in a unit test)."""


def _tiny_torchaudio():
    import torchaudio

    torch.manual_seed(0)
    model = torchaudio.models.wav2vec2_model(**TINY_W2V).eval()
    for name, p in model.named_parameters():  # norms away from their initial 1 / 0, so a mix-up shows
        if "norm" in name:
            p.data.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    return model


def _fairseq_key(k: str) -> str:
    """torchaudio -> fairseq names, the inverse of torchaudio's import_fairseq._map_key: fairseq's HubertModel
    (fairseq/models/hubert/hubert.py:248-329: feature_extractor, layer_norm, post_extract_proj, encoder) with
    wav2vec2.py's ConvFeatureExtractionModel (:844-914: conv_layers.N.0 conv, .2 GroupNorm) and
    TransformerEncoder (:925-943: pos_conv.0 weight-normed, layers.N.self_attn / fc1 / fc2)."""
    for a, b in ((r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
                 (r"feature_extractor\.conv_layers\.0\.layer_norm\.", "feature_extractor.conv_layers.0.2."),
                 (r"encoder\.feature_projection\.projection\.", "post_extract_proj."),
                 (r"encoder\.feature_projection\.layer_norm\.", "layer_norm."),
                 (r"pos_conv_embed\.conv\.parametrizations\.weight\.original0", "pos_conv.0.weight_g"),
                 (r"pos_conv_embed\.conv\.parametrizations\.weight\.original1", "pos_conv.0.weight_v"),
                 (r"pos_conv_embed\.conv\.bias", "pos_conv.0.bias"), (r"encoder\.transformer\.", "encoder."),
                 (r"\.attention\.", ".self_attn."),
                 (r"layers\.(\d+)\.layer_norm\.", r"layers.\1.self_attn_layer_norm."),
                 (r"feed_forward\.intermediate_dense", "fc1"), (r"feed_forward\.output_dense", "fc2")):
        k = __import__("re").sub(a, b, k)
    return k


def test_a_fairseq_hubert_checkpoint_loads_and_reads_as_the_original(tmp_path, monkeypatch):
    """As fairseq saves `hubert_base_ls960.pt`: Trainer.state_dict() (fairseq/trainer.py:401-441: args None, cfg a
    plain dict with model / task, model the state dict with mask_emb, final_proj and label_embs_concat,
    task_state holding fairseq Dictionary objects (tasks/hubert_pretraining.py:123-150)); torch.save at protocol 2.
    Read without fairseq, its Dictionary let in as an inert object; the features equal the original network's."""
    import sys
    import types

    model = _tiny_torchaudio()
    state = {_fairseq_key(k): v for k, v in model.state_dict().items()}
    state.update({"mask_emb": torch.randn(48), "final_proj.weight": torch.randn(16, 48),
                  "final_proj.bias": torch.zeros(16),
                  "label_embs_concat": torch.randn(504, 16)})
    mod = types.ModuleType("fairseq.data.dictionary")
    Dictionary = type("Dictionary", (), {"__module__": "fairseq.data.dictionary"})  # noqa: N806
    mod.Dictionary = Dictionary
    for name, m in (("fairseq", types.ModuleType("fairseq")), ("fairseq.data", types.ModuleType("fairseq.data")),
                    ("fairseq.data.dictionary", mod)):
        monkeypatch.setitem(sys.modules, name, m)
    d = Dictionary()
    d.symbols, d.count, d.indices = ["<s>", "0", "1"], [1, 5, 7], {"<s>": 0, "0": 1, "1": 2}
    cfg = {"_name": None, "common": {"fp16": True, "log_interval": 200}, "model": {
        "_name": "hubert", "label_rate": 50.0, "extractor_mode": "default", "encoder_layers": 2,
        "encoder_embed_dim": 48,
        "encoder_ffn_embed_dim": 96, "encoder_attention_heads": 4, "activation_fn": "gelu", "layer_norm_first": False,
        "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", "conv_bias": False, "conv_pos": 16,
        "conv_pos_groups": 4, "final_dim": 16, "untie_final_proj": False},
        "task": {"_name": "hubert_pretraining", "normalize": False, "labels": ["km"], "sample_rate": 16000}}
    torch.save({"args": None, "cfg": cfg, "model": state, "criterion": None,
                "optimizer_history": [{"criterion_name": "HubertCriterion", "optimizer_name": "FairseqAdam",
                                       "lr_scheduler_state": {"best": None}, "num_updates": 400000}],
                "task_state": {"dictionaries": [d]}, "extra_state": {"epoch": 1}}, tmp_path / "hubert_base_ls960.pt")
    legacy = torch.load(tmp_path / "hubert_base_ls960.pt", weights_only=False)  # fairseq's early files: torch < 1.6
    torch.save(legacy, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("fairseq.data.dictionary", "fairseq.data", "fairseq"):
        monkeypatch.delitem(sys.modules, name)
    from shared.data import speech_encoders as se

    assert se.read(tmp_path / "legacy.pt").form == "fairseq"
    ck = se.read(tmp_path / "hubert_base_ls960.pt")
    assert ck.form == "fairseq" and ck.family == "hubert"
    import torchaudio

    back = torchaudio.models.wav2vec2_model(**{**ck.config, "encoder_num_heads": 4})
    back.load_state_dict(ck.state, strict=True)
    x = torch.randn(1, 8000)
    with torch.no_grad():
        torch.testing.assert_close(back.eval().extract_features(x)[0][-1], model.extract_features(x)[0][-1])
    with pytest.raises(se.EncoderError, match=r"hubert_base_ls960\.pt: a 48-dim 2-layer group_norm model checkpoint "
                                              r"\(fairseq\), not hubert-base"):
        se.build("hubert-base", tmp_path / "hubert_base_ls960.pt")


def test_a_hugging_face_folder_loads_and_reads_as_the_original(tmp_path):
    """As transformers' `save_pretrained` writes a HubertModel (config.json with HubertConfig's fields; weights in
    model.safetensors under the module names of modeling_hubert: feature_extractor.conv_layers.N.conv /
    .layer_norm, feature_projection.*, encoder.pos_conv_embed.conv.weight_g / weight_v, encoder.layers.N.attention
    / feed_forward / final_layer_norm, masked_spec_embed; no prefix for the bare model, `hubert.` for *ForCTC)."""
    import json

    safetensors = pytest.importorskip("safetensors.torch")
    model = _tiny_torchaudio()
    for prefix in ("", "hubert."):
        folder = tmp_path / f"hf{prefix}"
        folder.mkdir()
        hf = {}
        for k, v in model.state_dict().items():
            k = k.replace("encoder.transformer.", "encoder.")
            k = k.replace("encoder.feature_projection.", "feature_projection.")
            k = k.replace("conv.parametrizations.weight.original0", "conv.weight_g")
            hf[prefix + k.replace("conv.parametrizations.weight.original1", "conv.weight_v")] = v.contiguous()
        hf[prefix + "masked_spec_embed"] = torch.rand(48)
        if prefix:
            hf["lm_head.weight"], hf["lm_head.bias"] = torch.randn(32, 48), torch.zeros(32)
        safetensors.save_file(hf, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps({
            "architectures": ["HubertForCTC" if prefix else "HubertModel"], "model_type": "hubert",
            "feat_extract_norm": "group", "do_stable_layer_norm": False, "conv_dim": [32] * 7,
            "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_bias": False,
            "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96,
            "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, "feat_proj_layer_norm": True,
            "hidden_act": "gelu", "layer_norm_eps": 1e-5, "mask_time_prob": 0.05, "vocab_size": 32,
            "torch_dtype": "float32", "transformers_version": "4.46.0"}, indent=2))
        from shared.data import speech_encoders as se

        ck = se.read(folder)
        import torchaudio

        back = torchaudio.models.wav2vec2_model(**ck.config)
        back.load_state_dict(ck.state, strict=True)
        x = torch.randn(1, 8000)
        with torch.no_grad():
            torch.testing.assert_close(back.eval().extract_features(x)[0][-1], model.extract_features(x)[0][-1])


def test_a_checkpoint_of_another_size_is_refused_by_name(tmp_path):
    """wav2vec2-large's keys are a subset of wav2vec2-large-lv60k's and hubert-large's with the same shapes, so
    loading with strict=False took either for wav2vec2-large; the shapes and keys now name what a file is."""
    import torchaudio

    from shared.data import speech_encoders as se

    for builder, name in ((torchaudio.models.wav2vec2_large_lv60k, "wav2vec2-large-lv60k"),
                          (torchaudio.models.hubert_large, "hubert-large"),
                          (torchaudio.models.wav2vec2_large, "wav2vec2-large")):
        with torch.device("meta"):
            state = builder().state_dict()
        ck = se._torchaudio(state)
        assert se.named(ck.config) == name
        if name != "wav2vec2-large":
            match = f"x.pt: a {name} checkpoint \\(torchaudio\\), not wav2vec2-large"
            with pytest.raises(se.EncoderError, match=match):
                se.check("wav2vec2-large", ck, "x.pt")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    torch.save({"model": Payload(), "cfg": {}}, tmp_path / "crafted.pt")
    with pytest.raises(se.EncoderError, match=r"crafted\.pt: cannot load safely"):
        se.read(tmp_path / "crafted.pt")
    assert not marker.exists()
    torch.save({"something": torch.zeros(1)}, tmp_path / "odd.pt")
    with pytest.raises(se.EncoderError, match=r"odd\.pt: not a HuBERT / wav2vec 2\.0 state dict"):
        se.read(tmp_path / "odd.pt")


def test_every_layer_mixed_by_learned_weights(tmp_path):
    """`ARCH:PATH@all` keeps every layer ([L x D] a 50 Hz frame); the model's audio embedding mixes the L layers
    with softmax weights (equal at the start: the mean of the layers) before its projection."""
    from shared.config import ModelConfig
    from shared.models.blocks import AudioEmbed

    emb = AudioEmbed(audio_dim=3 * 4, width=8, layers=3)
    x = torch.randn(2, 5, 6, 2 * 12)
    mean = x.view(2, 5, 6, 2, 3, 4).mean(-2).reshape(2, 5, 6, 8)
    torch.testing.assert_close(emb._mixed(x), mean)
    with pytest.raises(ValueError, match="audio_dim=10 is not audio_layers=3 layers"):
        ModelConfig(audio_dim=10, audio_layers=3)


# VAEs ----------------------------------------------------------------------------------------------------------


def test_a_wan22_shaped_vae_gives_latents_of_its_declared_size(tmp_path):
    """Wan2.2's VAE as diffusers converts it (scripts/convert_wan_to_diffusers.py `vae22_diffusers_config`:
    patch_size 2, in/out_channels 12 = 3 x 2 x 2, is_residual, scale_factor_spatial 16, dim_mult [1, 2, 4, 4]),
    narrow and random: 64 x 64 frames -> 4 x 4 latents, the declared 16x (the old reader derived 8 from dim_mult)."""
    diffusers = pytest.importorskip("diffusers")
    from shared.data.codecs import get_codec

    vae = diffusers.AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                     temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                                     out_channels=12, patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
                                     latents_mean=[0.1] * 4, latents_std=[2.0] * 4)
    vae.save_pretrained(tmp_path / "wan22")
    codec = get_codec(f"diffusers-wan:{tmp_path / 'wan22'}")
    frames = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    z = codec.encode(frames)
    assert codec.latent_shape(64) == (4, 4, 4) and z.shape == (2, 4, 4, 4)
    assert codec.decode_rgb(torch.from_numpy(z)).shape == (2, 3, 64, 64)


def test_a_kl_vae_with_latent_statistics_normalises_by_them(tmp_path):
    """AutoencoderKL configs that carry latents_mean / latents_std (EDM / Playground-v2.5 VAEs: diffusers
    loaders/single_file_utils.py) are used as diffusers' SDXL pipelines use them: (z - mean) * scaling / std."""
    diffusers = pytest.importorskip("diffusers")
    from shared.data.codecs import get_codec

    kw = dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1)
    torch.manual_seed(0)
    plain = diffusers.AutoencoderKL(**kw, scaling_factor=0.5)
    plain.save_pretrained(tmp_path / "plain")
    stats = diffusers.AutoencoderKL(**kw, scaling_factor=0.5, latents_mean=[0.1, -0.2, 0.3, 0.0],
                                    latents_std=[2.0, 1.0, 0.5, 4.0])
    stats.load_state_dict(plain.state_dict())
    stats.save_pretrained(tmp_path / "stats")
    frames = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    a = get_codec(f"diffusers-kl:{tmp_path / 'plain'}").encode(frames)
    codec = get_codec(f"diffusers-kl:{tmp_path / 'stats'}")
    b = codec.encode(frames)
    mean, std = np.array([0.1, -0.2, 0.3, 0.0])[:, None, None], np.array([2.0, 1.0, 0.5, 4.0])[:, None, None]
    np.testing.assert_allclose(b, (a / 0.5 - mean) * 0.5 / std, rtol=1e-4, atol=1e-5)
    raw = codec.vae.decode(torch.from_numpy(a / 0.5).float()).sample
    torch.testing.assert_close(codec.decode_rgb(torch.from_numpy(b)), raw, rtol=1e-4, atol=1e-4)


# Face crop (`python -m shared.data.prepare`) -------------------------------------------------------------------------


def _astronaut(side: int) -> np.ndarray:
    """skimage.data.astronaut() (a real photograph scikit-image ships) resized to side x side."""
    from skimage import data

    x = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float()
    y = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
    return y[0].permute(1, 2, 0).round().byte().numpy()


def _moving_face(n: int, blank: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """n frames of 400 x 300: the photograph pasted off-centre, moving right and down; frames in `blank` without it.
    Returns (frames, paste offsets [n, 2])."""
    face = _astronaut(240)
    offs = np.stack([np.linspace(20, 140, n), np.linspace(10, 50, n)], 1).round().astype(int)
    frames = np.full((n, 300, 400, 3), 90, np.uint8)
    for i, (x, y) in enumerate(offs):
        if not blank[0] <= i < blank[1]:
            frames[i, y : y + 240, x : x + 240] = face
    return frames, offs


def test_prepare_follows_an_off_centre_face_in_a_moving_frame(tmp_path):
    """The face's true box in the photograph: the detector's box on every 5th frame, taken relative to where the
    photograph was pasted (median: one box, free of the detector's 10% scale steps). The crop's centre stays within
    4 pixels of that box's centre moved with the paste, in every frame (the box is 42 pixels wide), its size within
    10%, the audio comes along."""
    from shared.data.media import probe
    from shared.data.prepare import FaceDetector, PrepareOptions, prepare

    frames, offs = _moving_face(75)
    det = FaceDetector()
    fx, fy, fs = np.median([np.array(det(frames[i])[0]) - [*offs[i], 0] for i in range(0, 75, 5)], 0)
    raw = tmp_path / "raw"
    raw.mkdir()
    write_mp4(raw / "talk.mp4", frames, 25, 0.1 * np.sin(np.arange(48000) / 10).astype(np.float32))
    summary = prepare(raw, tmp_path / "out", PrepareOptions(size=128, detect_every=3))
    (entry,) = summary["inputs"]
    assert entry["face_found"] == 1.0 and entry["written"] == ["talk.mp4"] and not entry["cut"]
    box = np.load(tmp_path / "out" / "talk.crop.npz")["box"]
    truth = offs + [fx + fs / 2, fy + fs / 2]
    assert np.abs(box[:, :2] - truth).max() <= 4.0
    assert np.abs(box[:, 2] * 0.6 / fs - 1).max() <= 0.10
    info = probe(tmp_path / "out" / "talk.mp4")
    assert info["has_audio"] and abs(info["duration"] - 3.0) < 0.05 and info["width"] == 128


def test_prepare_cuts_a_frame_folder_where_the_face_is_gone(tmp_path):
    """VFHQ-style input: a folder of PNG frames and a sidecar wav. 1.2 s without a face in the middle is cut out
    (reported); the two pieces keep their own stretch of the audio."""
    from PIL import Image
    from scipy.io import wavfile

    from shared.data.media import probe, read_audio
    from shared.data.prepare import PrepareOptions, prepare

    frames, _ = _moving_face(90, blank=(30, 60))
    folder = tmp_path / "raw" / "clip7"
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:08d}.png")
    wavfile.write(tmp_path / "raw" / "clip7.wav", 16000, (np.linspace(-1, 1, 16000 * 90 // 25) * 8000).astype(np.int16))
    summary = prepare(tmp_path / "raw", tmp_path / "out", PrepareOptions(size=64, detect_every=3))
    (entry,) = summary["inputs"]
    assert entry["written"] == ["clip7_part0.mp4", "clip7_part1.mp4"]
    (gap,) = [c for c in entry["cut"] if c["reason"] == "no face"]
    assert abs(gap["frames"][0] - 30) <= 3 and abs(gap["frames"][1] - 60) <= 3
    first, second = (read_audio(tmp_path / "out" / n) for n in entry["written"])
    assert abs(first.mean() + 0.163) < 0.03 and abs(second.mean() - 0.163) < 0.03  # thirds of a +-0.244 ramp
    assert probe(tmp_path / "out" / "clip7_part1.mp4")["has_audio"]


def test_prepare_refuses_bad_input_in_one_line(tmp_path, capsys):
    from shared.data.prepare import main
    from tests.test_robust import refused

    assert "nowhere: not a folder" in refused(capsys, main, tmp_path / "nowhere", "--out", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    assert "no videos" in refused(capsys, main, tmp_path / "empty", "--out", tmp_path / "o")
    assert "--framing" in refused(capsys, main, tmp_path / "empty", "--out", tmp_path / "o", "--framing", "3")
    write_mp4(tmp_path / "empty" / "grey.mp4", np.full((30, 64, 64, 3), 90, np.uint8), 25)
    assert "no clip with a face" in refused(capsys, main, tmp_path / "empty", "--out", tmp_path / "o")


def test_the_rehearsal_chain_runs_on_tiny(tmp_path):
    """benchmarks/rehearsal.py on `tiny`: an NTSC video with AAC and the face off-centre -> prepare -> LivePortrait
    templates -> ingest through an SD-layout VAE and HuBERT-base (random) -> stage 1 -> stage 2 from it ->
    self-forcing -> generate.py with the VAE decoder -> an mp4 with audio; the GPU runs the same chain on `full`."""
    pytest.importorskip("diffusers")
    import sys as _sys

    from shared.data.cache import CacheReader
    from shared.data.media import probe

    _sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import rehearsal

    report = rehearsal.main(["--preset", "tiny", "--out", str(tmp_path), "--seconds", "3", "--steps", "2"])
    assert [r["stage"].split(" ")[0] for r in report["stages"]] == [
        "raw", "encoders", "prepare", "ingest", "stage", "stage", "self-forcing", "generate", "score"]
    scored = report["scores"]  # generate.py's video scored against its source clip (#37 point 4)
    assert scored["videos"] == 1 and all(k in scored for k in ("fid", "generated_sync_c", "generated_csim", "m_lmd"))
    losses = [r["last_loss"]["loss"] for r in report["stages"] if "last_loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    meta = CacheReader(tmp_path / "cache.h5").meta
    assert meta.codec["class"] == "AutoencoderKL" and meta.audio_features["name"].startswith("hubert-base:")
    assert meta.struct_kind == "liveportrait" and len(meta.struct_layout) == 72
    info = probe(tmp_path / "talk_generated.mp4")
    assert info["has_audio"] and info["width"] == 64 and abs(info["duration"] - 2.0) < 0.1



def test_the_rehearsal_refuses_a_stage_that_skipped_steps(monkeypatch):
    """A training stage whose loss went non-finite fails the rehearsal (the loop skips such steps and finishes)."""
    import sys as _sys

    from shared.errors import UserError

    _sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import rehearsal

    history = [{"step": 0, "loss": float("nan"), "video": float("nan")}]
    monkeypatch.setattr(rehearsal, "run_cli", lambda *a: {"history": history, "skipped": 2, "step": 2})
    stages = rehearsal.Stages("cpu")
    with pytest.raises(UserError, match="self-forcing fine-tune: 2 of 2 steps had a non-finite loss"):
        rehearsal.trained(stages, "self-forcing fine-tune", "dual", [])


def test_a_fine_tuned_fairseq_checkpoint_and_a_foreign_folder(tmp_path):
    """A fine-tuned fairseq HuBERT (`hubert_large_ll60k_finetune_ls960.pt`'s layout: cfg.model._name hubert_ctc,
    the pre-training config in w2v_args, the encoder's keys under w2v_encoder.w2v_model., label_embs_concat kept
    there by HubertModel.remove_pretraining_modules, the CTC head w2v_encoder.proj; fairseq/models/hubert/
    hubert_asr.py) reads as its encoder; a Hugging Face folder of another model is refused by name."""
    import json

    import torchaudio

    from shared.data import speech_encoders as se

    model = _tiny_torchaudio()
    state = {"w2v_encoder.w2v_model." + _fairseq_key(k): v for k, v in model.state_dict().items()}
    state.update({"w2v_encoder.w2v_model.mask_emb": torch.randn(48),
                  "w2v_encoder.w2v_model.label_embs_concat": torch.randn(504, 16),
                  "w2v_encoder.proj.weight": torch.randn(32, 48), "w2v_encoder.proj.bias": torch.zeros(32)})
    inner = {"_name": "hubert", "extractor_mode": "default", "encoder_layers": 2, "encoder_embed_dim": 48,
             "encoder_ffn_embed_dim": 96, "encoder_attention_heads": 4, "layer_norm_first": False,
             "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", "conv_pos": 16,
             "conv_pos_groups": 4}
    torch.save({"args": None, "cfg": {"model": {"_name": "hubert_ctc", "w2v_path": "/x/hubert.pt",
                                                "w2v_args": {"model": inner, "task": {"normalize": False}}}},
                "model": state, "optimizer_history": [], "extra_state": {}}, tmp_path / "ft.pt")
    ck = se.read(tmp_path / "ft.pt")
    back = torchaudio.models.wav2vec2_model(**{**ck.config, "encoder_num_heads": 4})
    back.load_state_dict(ck.state, strict=True)
    x = torch.randn(1, 8000)
    with torch.no_grad():
        torch.testing.assert_close(back.eval().extract_features(x)[0][-1], model.extract_features(x)[0][-1])
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 768}))
    with pytest.raises(se.EncoderError, match=r"bert/config\.json: model_type 'bert', not hubert or wav2vec2"):
        se.read(tmp_path / "bert")


def test_emoca_without_a_face_in_the_last_frames_holds_the_last_row(tmp_path):
    """EMOCA writes no folder for the last frames when they show no face: the last row is held to the video's end
    and the note says so (the video is not refused as 'shorter')."""
    n, m = 10, flame_motion(10)
    times = video_25fps(tmp_path / "v.mp4", n)
    for i in range(7):
        d = tmp_path / "v.flame" / f"{i + 1:06d}_000"
        d.mkdir(parents=True)
        np.save(d / "exp.npy", m["exp"][i, :50].astype(np.float32))
        np.save(d / "pose.npy", np.r_[m["rot"][i], m["jaw"][i]].astype(np.float32))
    track = load_struct("flame", tmp_path / "v.mp4", n, 25.0, times)
    np.testing.assert_allclose(track.values[7:, 50:53], np.repeat(m["rot"][6:7], 3, 0), atol=1e-6)
    assert any("the last 3 frames had no face" in note for note in track.notes)


def test_prepare_goes_on_past_a_broken_video(tmp_path):
    """A file that is no video fails alone (reported in prepare.json), the others are prepared (here by a pool of
    two processes)."""
    from shared.data.prepare import PrepareOptions, _natural, prepare

    frames, _ = _moving_face(30)
    (tmp_path / "raw").mkdir()
    write_mp4(tmp_path / "raw" / "good.mp4", frames, 25)
    (tmp_path / "raw" / "bad.mp4").write_bytes(b"not a video at all" * 100)
    summary = prepare(tmp_path / "raw", tmp_path / "out",
                      PrepareOptions(size=64, detect_every=3, min_seconds=0.5, workers=2))  # in two processes
    entries = {Path(e["input"]).name: e for e in summary["inputs"]}
    assert "cannot open" in entries["bad.mp4"]["error"] and entries["good.mp4"]["written"] == ["good.mp4"]
    assert entries["good.mp4"]["jitter_centre_px"] < 3 and 35 < entries["good.mp4"]["box_px"] < 50
    assert sorted([Path("10.png"), Path("2.png"), Path("1.png")], key=_natural) == [Path("1.png"), Path("2.png"),
                                                                                     Path("10.png")]


def test_a_layer_normalised_encoder_gets_a_normalised_waveform_its_final_norm_and_chunks(tmp_path, monkeypatch):
    """A pre-LN model with a layer-normalised front-end (hubert-large's kind, narrowed): its features do not change
    when the waveform is scaled (the waveform is normalised, as torchaudio's bundles and fairseq do), the last
    layer is the encoder's output after its final layer norm (fairseq's and Hugging Face's `last_hidden_state`),
    `@all` stacks every layer, and long audio goes through in chunks the encoder sees one at a time."""
    import torchaudio

    from shared.data import speech_encoders as se
    from shared.data.features import SSLFeatures

    config = {**TINY_W2V, "extractor_mode": "layer_norm", "encoder_layer_norm_first": True}
    torch.manual_seed(0)
    model = torchaudio.models.wav2vec2_model(**config).eval()
    torch.save(model.state_dict(), tmp_path / "ln.pt")
    monkeypatch.setitem(se.ARCHS, "tiny-ln", {k: config[k] for k in (*se.SHAPE_FIELDS, "encoder_num_heads")})
    feats = SSLFeatures("tiny-ln", str(tmp_path / "ln.pt"))
    wav = torch.randn(16000)
    out = feats.raw(wav)
    torch.testing.assert_close(feats.raw(10 * wav + 0.5), out, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        x = torch.nn.functional.pad(torch.nn.functional.layer_norm(wav, wav.shape), (200, 200))[None]
        want = model(x)[0][0]  # forward = every layer, then the final layer norm
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    assert SSLFeatures("tiny-ln", str(tmp_path / "ln.pt"), "all").raw(wav).shape == (51, 2 * 48)
    seen = []
    monkeypatch.setattr(SSLFeatures, "CHUNK", 20)
    monkeypatch.setattr(SSLFeatures, "CONTEXT", 5)
    forward = SSLFeatures._forward
    monkeypatch.setattr(SSLFeatures, "_forward", lambda self, w: seen.append(len(w)) or forward(self, w))
    chunked = feats.raw(wav)
    assert chunked.shape == out.shape and max(seen) <= (20 + 2 * 5) * 320 and len(seen) == 3


def test_two_prepares_into_one_folder_the_second_is_refused(tmp_path, capsys):
    from shared import lock
    from shared.data.prepare import main
    from tests.test_robust import refused

    (tmp_path / "raw").mkdir()
    write_mp4(tmp_path / "raw" / "a.mp4", np.full((10, 64, 64, 3), 90, np.uint8), 25)
    with lock.folder(tmp_path / "out", "prepared clips"):
        assert "prepared clips" in refused(capsys, main, tmp_path / "raw", "--out", tmp_path / "out")
