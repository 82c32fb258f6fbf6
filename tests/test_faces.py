"""CSIM and LMD (#37): insightface's landmark and ArcFace ONNX networks run as insightface runs them.

The stand-in networks (`shared.evaluation.standins`) are ONNX graphs with random weights in the published files'
signatures (`1k3d68.onnx`: a 192 x 192 input and a 3,309-value output, of which the last 68 x 3 are the landmarks;
`w600k_r50.onnx`: 112 x 112 in, 512 out). The reference below re-implements, step by step on a BGR image as cv2 reads
it, deepinsight/insightface python-package/insightface/model_zoo/landmark.py `Landmark.__init__` (lines 26-47: the input
normalisation) and `Landmark.get` (lines 80-104), model_zoo/arcface_onnx.py `ArcFaceONNX.__init__` (lines 25-43) and
`get` / `get_feat` (lines 65-85), and utils/face_align.py `estimate_norm` / `norm_crop` (lines 11-30), `transform`
(52-68) and `trans_points2d` (71-80), at commit 7fadd420c2351d0ffa8cac403421c1a3ed733365."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")

from shared.evaluation import faces, standins  # noqa: E402
from shared.evaluation.field_metrics import csim, landmark_distance  # noqa: E402


def random_face_weights(folder: Path, seed: int = 0) -> None:
    """Stand-ins for buffalo_l's 1k3d68.onnx (normalising its own input) and w600k_r50.onnx (not)."""
    standins.write_faces(folder, seed)


# ------------------------------------------------------------------------------ insightface, step by step


def _ref_normalisation(path, default):
    names = [n.name for n in onnx.load(str(path)).graph.node[:8]]
    sub = any(n.startswith("Sub") or n.startswith("_minus") for n in names)
    mul = any(n.startswith("Mul") or n.startswith("_mul") for n in names)
    return (0.0, 1.0) if sub and mul else default


def _ref_landmarks(path, bgr, bbox):
    from skimage import transform as trans

    mean, std = _ref_normalisation(path, (127.5, 128.0))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    size = sess.get_inputs()[0].shape[2]
    w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
    center = (bbox[2] + bbox[0]) / 2, (bbox[3] + bbox[1]) / 2
    scale = size / (max(w, h) * 1.5)
    t = (trans.SimilarityTransform(scale=scale) + trans.SimilarityTransform(translation=(-center[0] * scale,
                                                                                         -center[1] * scale))
         + trans.SimilarityTransform(rotation=0.0) + trans.SimilarityTransform(translation=(size / 2, size / 2)))
    m = t.params[0:2]
    aimg = cv2.warpAffine(bgr, m, (size, size), borderValue=0.0)
    blob = cv2.dnn.blobFromImage(aimg, 1.0 / std, (size, size), (mean, mean, mean), swapRB=True)
    pred = sess.run(None, {sess.get_inputs()[0].name: blob})[0][0]
    pred = pred.reshape((-1, 3)) if pred.shape[0] >= 3000 else pred.reshape((-1, 2))
    pred = pred[-68:, :]
    pred[:, 0:2] += 1
    pred[:, 0:2] *= size // 2
    im = cv2.invertAffineTransform(m)
    out = np.zeros((68, 2), np.float32)
    for i in range(68):
        out[i] = np.dot(im, np.array([pred[i, 0], pred[i, 1], 1.0], dtype=np.float32))[0:2]
    return out


def _ref_embedding(path, bgr, kps):
    from skimage import transform as trans

    mean, std = _ref_normalisation(path, (127.5, 127.5))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tform = trans.SimilarityTransform()
    tform.estimate(kps, faces.ARCFACE_POINTS.copy())
    aimg = cv2.warpAffine(bgr, tform.params[0:2, :], (112, 112), borderValue=0.0)
    blob = cv2.dnn.blobFromImages([aimg], 1.0 / std, (112, 112), (mean, mean, mean), swapRB=True)
    return sess.run(None, {sess.get_inputs()[0].name: blob})[0].flatten()


# ------------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("buffalo_l")
    random_face_weights(folder)
    return folder, faces.load_faces(folder)


def _photo():
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[::2, ::2])  # 256 x 256 RGB, a real face


@pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-image 0.26 deprecates `estimate`, which insightface uses
def test_landmarks_and_embedding_are_insightfaces(nets):
    folder, fn = nets
    assert (fn.landmarks.mean, fn.landmarks.std) == (0.0, 1.0)  # the stand-in normalises itself, as mxnet's exports
    assert (fn.arcface.mean, fn.arcface.std) == (127.5, 127.5)
    rgb = _photo()
    box = np.array([70.0, 20.0, 150.0, 110.0], np.float32)
    lm = faces.landmarks(fn.landmarks, rgb[None], box[None])[0]
    ref = _ref_landmarks(folder / faces.LANDMARK_FILE, rgb[..., ::-1].copy(), box)
    np.testing.assert_allclose(lm, ref, rtol=0, atol=1e-3)
    emb = faces.identity(fn, rgb[None], lm[None])[0]
    ref_emb = _ref_embedding(folder / faces.ARCFACE_FILE, rgb[..., ::-1].copy(), faces.five_points(lm))
    np.testing.assert_allclose(emb, ref_emb, rtol=1e-5, atol=1e-6)


def test_known_answers(nets):
    _, fn = nets
    rgb = _photo()
    # 5 points that are a similarity (scale 1.7, 12 degrees, a shift) of ArcFace's template align back onto it
    a = np.deg2rad(12)
    rot = 1.7 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = faces.ARCFACE_POINTS @ rot.T + [40.0, 25.0]
    m = faces.align_matrix(pts)
    np.testing.assert_allclose(pts @ m[:, :2].T + m[:, 2], faces.ARCFACE_POINTS, atol=1e-4)
    lm = np.tile(faces.ARCFACE_POINTS.mean(0), (68, 1)).astype(np.float32)
    lm[36:42], lm[42:48], lm[30], lm[48], lm[54] = pts[0], pts[1], pts[2], pts[3], pts[4]
    np.testing.assert_allclose(faces.five_points(lm), pts, atol=1e-5)
    emb = faces.identity(fn, np.stack([rgb, rgb]), np.stack([lm, lm]))
    assert csim(emb[0], emb[1]) == pytest.approx(1.0, abs=1e-12)  # a face with itself
    assert csim(emb[0], -emb[0]) == pytest.approx(-1.0)
    # LMD: a video with itself 0; every landmark moved by (3, 4) px: 5 px
    t = np.random.default_rng(0).uniform(0, 256, (10, 68, 2))
    assert landmark_distance(t, t) == 0.0
    assert landmark_distance(t, t + [3.0, 4.0]) == pytest.approx(5.0)
    assert landmark_distance(t, t + [3.0, 4.0] * (np.arange(68) >= 48)[:, None], faces.MOUTH) == pytest.approx(5.0)


def test_bad_weight_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="1k3d68.onnx.*buffalo_l"):
        faces.load_faces(tmp_path)
    (tmp_path / faces.LANDMARK_FILE).write_bytes(b"not onnx")
    (tmp_path / faces.ARCFACE_FILE).write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="1k3d68.onnx: not an ONNX model"):
        faces.load_faces(tmp_path)
    with pytest.raises(ValueError, match="degenerate"):
        faces.align_matrix(np.zeros((5, 2), np.float32))  # every point at one place
    with pytest.raises(ValueError, match="one shape"):
        landmark_distance(np.zeros((3, 68, 2)), np.zeros((4, 68, 2)))


def test_face_boxes_follow_the_detector():
    rgb = _photo()
    boxes = faces.face_boxes(np.stack([rgb, np.zeros_like(rgb), rgb]))
    assert boxes is not None and boxes.shape == (3, 4)
    x0, y0, x1, y1 = boxes[0]
    assert 60 < (x0 + x1) / 2 < 140 and 20 < (y0 + y1) / 2 < 110  # the astronaut's face, not the flag or the suit
    np.testing.assert_array_equal(boxes[1], boxes[0])  # the empty frame takes its neighbour's box
    assert faces.face_boxes(np.zeros((2, 64, 64, 3), np.uint8)) is None
    shifted = np.roll(rgb, 9, axis=1)  # detected every 2nd frame: frame 1 is never looked at, it takes frame 0's box
    sparse = faces.face_boxes(np.stack([rgb, shifted, shifted]), every=2)
    np.testing.assert_array_equal(sparse[1], sparse[0])
    assert sparse[2][0] > sparse[0][0]  # frame 2 was detected: the face 9 px to the right
