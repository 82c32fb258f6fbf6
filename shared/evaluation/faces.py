"""68 face landmarks (LMD) and ArcFace identity embeddings (CSIM) from insightface's ONNX models, run by onnxruntime
with insightface's own pre- and post-processing (deepinsight/insightface, python-package/insightface:
model_zoo/landmark.py `Landmark.get`, model_zoo/arcface_onnx.py `ArcFaceONNX.get`, utils/face_align.py `norm_crop`).

Weights: insightface's `buffalo_l` pack (`1k3d68.onnx`: 68 landmarks in dlib's order, with depth; `w600k_r50.onnx`:
ArcFace ResNet-50 trained on WebFace600K). Frames are RGB uint8 [H, W, 3]; insightface reads BGR from cv2 and swaps
to RGB in `blobFromImage`, so the networks see the same numbers.

Where insightface's `FaceAnalysis` finds the box and the 5 alignment points with its SCRFD detector, the box here is
the project's detector (`shared.data.prepare.FaceDetector`) and the 5 points come from the 68 landmarks (the eyes'
centres, the nose tip, the mouth's corners): docs/metrics.md says what that changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .weights import weight_file

LANDMARK_FILE, ARCFACE_FILE = "1k3d68.onnx", "w600k_r50.onnx"
PUBLISHED = ("insightface's model pack buffalo_l (github.com/deepinsight/insightface, release v0.7, buffalo_l.zip; "
             "unzip it into the weights folder)")
# insightface utils/face_align.py `arcface_dst`: where the 5 points sit in a 112 x 112 ArcFace crop
ARCFACE_POINTS = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                           [70.7299, 92.2041]], dtype=np.float32)
MOUTH = slice(48, 68)  # dlib's 68-point order: the outer and inner lip contours
CHUNK = 64  # frames per onnxruntime call


@dataclass
class OnnxNet:
    """An insightface ONNX network: its session, square input size and input normalisation ((x - mean) / std)."""

    session: object
    input_name: str
    size: int
    mean: float
    std: float
    batch: int | None  # None: any batch size; else the fixed one

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """[N, size, size, 3] RGB uint8 -> the network's first output [N, ...] (float32)."""
        import cv2

        outs = []
        step = self.batch or CHUNK  # bounded memory however long the video
        for i in range(0, len(crops), step):
            # cv2's blob, as insightface makes it: (x - mean) * (1 / std), NCHW float32
            blob = cv2.dnn.blobFromImages(list(crops[i: i + step]), 1.0 / self.std, (self.size, self.size),
                                          (self.mean,) * 3, swapRB=False)
            outs.append(self.session.run(None, {self.input_name: blob})[0])
        return np.concatenate(outs)


def _normalisation(path: Path, default: tuple[float, float], bn_data: bool) -> tuple[float, float]:
    """insightface's rule: a model whose first 8 nodes subtract and multiply normalises its own input (mean 0, std
    1); `Landmark` also takes a `bn_data` node among the first 3 as that (landmark.py, arcface_onnx.py `__init__`)."""
    import onnx

    names = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node[:8]]
    sub = any(n.startswith(("Sub", "_minus")) for n in names)
    mul = any(n.startswith(("Mul", "_mul")) for n in names)
    if bn_data and "bn_data" in names[:3]:
        sub = mul = True
    return (0.0, 1.0) if sub and mul else default


def load_net(path: Path, default_norm: tuple[float, float], bn_data: bool, device: str = "cpu") -> OnnxNet:
    """An onnxruntime session of `path` (CUDA first when asked for and available); ValueError naming the file when
    onnxruntime cannot read it."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph-optimisation notes are not the user's business
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
        mean, std = _normalisation(path, default_norm, bn_data)
    except Exception as e:  # onnxruntime raises its own exception types for a foreign or truncated file
        raise ValueError(f"{path}: not an ONNX model onnxruntime can run ({type(e).__name__})") from None
    inp = session.get_inputs()[0]
    n, _, h, w = inp.shape
    if not (isinstance(h, int) and h == w):
        raise ValueError(f"{path}: input {inp.shape}, expected a square image [N, 3, S, S]")
    return OnnxNet(session, inp.name, h, mean, std, n if isinstance(n, int) else None)


@dataclass
class FaceNets:
    """The two networks the face metrics need."""

    landmarks: OnnxNet
    arcface: OnnxNet | None


def load_faces(weights: str | Path, device: str = "cpu", arcface: bool = True) -> FaceNets:
    """`1k3d68.onnx` and (for CSIM) `w600k_r50.onnx` from the weights folder (FileNotFoundError naming a missing
    one)."""
    lm = load_net(weight_file(weights, LANDMARK_FILE, PUBLISHED), (127.5, 128.0), True, device)
    if not arcface:
        return FaceNets(lm, None)
    return FaceNets(lm, load_net(weight_file(weights, ARCFACE_FILE, PUBLISHED), (127.5, 127.5), False, device))


def landmarks(net: OnnxNet, frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """68 (x, y) landmarks [N, 68, 2] in frame pixels, from RGB frames [N, H, W, 3] and face boxes [N, 4] (x0, y0,
    x1, y1): the box's centre, 1.5 times its longer side scaled to the input, the prediction in [-1, 1] mapped back
    (insightface `Landmark.get`)."""
    import cv2

    crops, inverse = [], []
    for rgb, (x0, y0, x1, y1) in zip(frames, boxes):
        scale = net.size / (max(x1 - x0, y1 - y0) * 1.5)
        cx, cy = (x0 + x1) / 2 * scale, (y0 + y1) / 2 * scale
        m = np.array([[scale, 0, net.size / 2 - cx], [0, scale, net.size / 2 - cy]])  # face_align.transform, no turn
        crops.append(cv2.warpAffine(rgb, m, (net.size, net.size), borderValue=0.0))
        inverse.append(cv2.invertAffineTransform(m))
    pred = net(np.stack(crops))
    pred = pred.reshape(len(pred), -1, 3 if pred.shape[1] >= 3000 else 2)[:, -68:, :2]
    pred = (pred + 1) * (net.size // 2)
    inv = np.stack(inverse)  # [N, 2, 3]
    return (np.einsum("npk,nck->npc", pred, inv[:, :, :2]) + inv[:, None, :, 2]).astype(np.float32)


def five_points(lm68: np.ndarray) -> np.ndarray:
    """ArcFace's 5 points [..., 5, 2] from 68 landmarks [..., 68, 2]: the centres of the two eyes (image left
    first), the nose tip, the mouth's left and right corners."""
    return np.stack([lm68[..., 36:42, :].mean(-2), lm68[..., 42:48, :].mean(-2), lm68[..., 30, :], lm68[..., 48, :],
                     lm68[..., 54, :]], axis=-2)


def align_matrix(points: np.ndarray, size: int = 112) -> np.ndarray:
    """The 2 x 3 similarity taking 5 points [5, 2] nearest (least squares, Umeyama) to ArcFace's template
    (face_align.py `estimate_norm`, for sizes that are multiples of 112)."""
    from skimage.transform import SimilarityTransform

    if size % 112:
        raise ValueError(f"align_matrix: ArcFace crops are multiples of 112 px, not {size}")
    dst = ARCFACE_POINTS * (size / 112.0)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26 (a failed fit has no params)
        m = getattr(SimilarityTransform.from_estimate(points, dst), "params", None)
    else:
        t = SimilarityTransform()
        m = t.params if t.estimate(points, dst) else None
    if m is None or not np.isfinite(m).all():
        raise ValueError(f"align_matrix: no similarity fits the 5 points {np.round(points, 1).tolist()} (degenerate)")
    return m[:2]


def identity(nets: FaceNets, frames: np.ndarray, lm68: np.ndarray) -> np.ndarray:
    """ArcFace embeddings [N, 512] of RGB frames [N, H, W, 3] aligned by their landmarks [N, 68, 2]."""
    import cv2

    size = nets.arcface.size
    crops = [cv2.warpAffine(f, align_matrix(five_points(lm), size), (size, size), borderValue=0.0)
             for f, lm in zip(frames, lm68)]
    return nets.arcface(np.stack(crops))


def face_boxes(frames: np.ndarray, every: int = 1) -> np.ndarray | None:
    """A box [T, 4] (x0, y0, x1, y1) per frame from the project's face detector (the largest detection), run on every
    `every`-th frame (the detector is the slow part: ~5 frames/s at 256 px on 2 CPU cores); a frame without a
    detection takes the nearest detected frame's; None when no frame has a face."""
    from ..data.prepare import FaceDetector

    detect = FaceDetector(max(frames.shape[1:3]))
    found = {}
    for t in range(0, len(frames), every):
        if dets := detect(frames[t]):
            x, y, s = max(dets, key=lambda d: d[2])
            found[t] = (x, y, x + s, y + s)
    if not found:
        return None
    keys = np.array(sorted(found))
    nearest = keys[np.abs(np.arange(len(frames))[:, None] - keys[None]).argmin(1)]
    return np.array([found[k] for k in nearest], dtype=np.float32)
