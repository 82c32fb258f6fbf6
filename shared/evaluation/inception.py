"""FID's Inception features through pytorch-fid's own network (mseitzer/pytorch-fid 0.3.0, `pytorch_fid.inception`),
with the weights read from a file the user has instead of downloaded.

pytorch-fid builds its FID Inception (torchvision's Inception v3 with the blocks patched to match TensorFlow's graph)
and fetches `pt_inception-2015-12-05-6726825d.pth` from its release page inside `fid_inception_v3`. Here the same
constructor runs with that fetch answered from the local file, so the network, its input resizing (bilinear to 299 x
299) and scaling ((0, 1) -> (-1, 1)) are the library's, not a copy. Frames go in as `ToTensor` makes them of RGB
images (uint8 / 255); the 2048-d pool features come out as `fid_score.get_activations` returns them.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import torch

from .weights import state_dict, weight_file

WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
PUBLISHED = ("pytorch-fid's release 'fid_weights': https://github.com/mseitzer/pytorch-fid/releases/download/"
             "fid_weights/pt_inception-2015-12-05-6726825d.pth")
DIMS = 2048  # the final average pool's features, FID's


def load_inception(path: str | Path, device: str = "cpu") -> torch.nn.Module:
    """pytorch-fid's `InceptionV3` (pool features) with the FID weights of `path` (the file, or a folder holding it),
    in eval mode. A missing file raises FileNotFoundError naming where it is published; a file of another network
    ValueError."""
    from pytorch_fid import inception as fid

    path = weight_file(path, WEIGHTS, PUBLISHED)
    state = state_dict(path, "pytorch-fid's FID Inception")
    # the library's constructor, its download answered from the file (it calls load_state_dict, strict, on it)
    with mock.patch.object(fid, "load_state_dict_from_url", lambda *a, **k: state):
        try:
            net = fid.InceptionV3([fid.InceptionV3.BLOCK_INDEX_BY_DIM[DIMS]])
        except RuntimeError as e:
            raise ValueError(f"{path}: not pytorch-fid's FID Inception ({str(e).splitlines()[0]})") from None
    return net.to(device).eval()


@torch.no_grad()
def features(net: torch.nn.Module, frames: np.ndarray, batch: int = 50) -> np.ndarray:
    """[N, 2048] pool features of RGB frames [N, H, W, 3] uint8, in batches (as `get_activations`)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"inception.features: frames must be uint8 [N, H, W, 3], got {frames.dtype} "
                         f"{list(frames.shape)}")
    dev = next(net.parameters()).device
    out = []
    for i in range(0, len(frames), batch):
        x = torch.from_numpy(frames[i : i + batch]).to(dev).permute(0, 3, 1, 2).float().div(255)  # ToTensor's scale
        pred = net(x)[0]
        if pred.shape[2:] != (1, 1):
            pred = torch.nn.functional.adaptive_avg_pool2d(pred, (1, 1))
        out.append(pred.flatten(1).cpu().double().numpy())
    return np.concatenate(out)
