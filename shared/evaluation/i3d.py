"""FVD's I3D features (Carreira & Zisserman 2017, Kinetics-400) through the TorchScript file StyleGAN-V publishes
(`i3d_torchscript.pt`, "a perfectly reproduced torchscript version" of the tf.hub model the original FVD uses), called
as StyleGAN-V calls it (universome/stylegan-v, src/metrics/frechet_video_distance.py and metric_utils.py): clips
[B, 3, T, H, W] of uint8 frames, `rescale=True, resize=True, return_features=True` (the network scales and resizes
them itself; the features are the logits' input). FVD-16: clips of 16 consecutive frames.

Loading a TorchScript archive runs TorchScript, not arbitrary Python (unlike a pickle), and nothing is downloaded:
`load_i3d(path)` reads the user's file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from .weights import weight_file

WEIGHTS = "i3d_torchscript.pt"
PUBLISHED = ("StyleGAN-V's src/metrics/frechet_video_distance.py: "
             "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt")
CLIP_FRAMES = 16  # FVD-16, the clip length talking-head papers report
DETECTOR_KWARGS = dict(rescale=True, resize=True, return_features=True)  # StyleGAN-V's compute_fvd


def load_i3d(path: str | Path, device: str = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript I3D of `path` (the file, or a folder holding it), in eval mode. A missing file raises
    FileNotFoundError naming where it is published; a file that is not TorchScript ValueError."""
    path = weight_file(path, WEIGHTS, PUBLISHED)
    try:
        with warnings.catch_warnings():  # TorchScript, deprecated in torch 2.11, is the published file's format
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as e:
        raise ValueError(f"{path}: not a TorchScript archive ({str(e).splitlines()[0]})") from None


def clips(frames: np.ndarray, length: int = CLIP_FRAMES) -> np.ndarray:
    """A video's frames [T, H, W, 3] cut into consecutive non-overlapping clips [N, length, H, W, 3] (a tail
    shorter than `length` dropped, as StyleGAN-V discards short videos)."""
    n = len(frames) // length
    return frames[: n * length].reshape(n, length, *frames.shape[1:])


@torch.no_grad()
def features(detector, video_clips: np.ndarray, batch: int = 8) -> np.ndarray:
    """[N, D] I3D features of uint8 clips [N, T, H, W, 3] (RGB), batch by batch."""
    if video_clips.ndim != 5 or video_clips.shape[-1] != 3 or video_clips.dtype != np.uint8:
        raise ValueError(f"i3d.features: clips must be uint8 [N, T, H, W, 3], got {video_clips.dtype} "
                         f"{list(video_clips.shape)}")
    dev = next(iter(detector.parameters()), torch.empty(0)).device
    out = []
    for i in range(0, len(video_clips), batch):
        x = torch.from_numpy(video_clips[i : i + batch]).permute(0, 4, 1, 2, 3).contiguous()  # [B, 3, T, H, W]
        out.append(detector(x.to(dev), **DETECTOR_KWARGS).cpu().double().numpy())
    return np.concatenate(out)
