"""SyncNet (Chung & Zisserman 2016) as syncnet_python runs it, for Sync-C / Sync-D (`field_metrics.sync_scores`).

The network's layers and their names are the ones `syncnet_v2.model` (a state dict of syncnet_python's `S`,
SyncNetModel.py) was saved with, so the published file loads strictly. The inputs are built as
`SyncNetInstance.evaluate` builds them: 224 x 224 face-crop frames in OpenCV's BGR order as floats 0-255, 5-frame
windows [N, 3, 5, 224, 224]; the 16 kHz int16 audio's MFCCs from python_speech_features' defaults (13 coefficients at
100 Hz) in 20-step windows [N, 1, 13, 20], four per video frame at 25 fps; min(frames, samples // 640) - 5 windows.
The weights are not downloaded: `load_syncnet(path)` reads a file the user has.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .weights import state_dict, weight_file

WEIGHTS = "syncnet_v2.model"
PUBLISHED = ("syncnet_python's download_model.sh: http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/"
             "syncnet_v2.model")
FPS, RATE = 25, 16000  # what the network was trained on (SyncNetInstance.py's header)
WINDOW = 5  # video frames per embedding; the audio window is the same 0.2 s: 20 MFCC steps
BATCH = 20  # run_syncnet.py's default batch


def _block(conv: nn.Module, channels: int, norm, pool: nn.Module | None = None) -> list[nn.Module]:
    """conv -> batch norm -> ReLU [-> pool]: four or three entries, indexed as syncnet_python's Sequential."""
    return [conv, norm(channels), nn.ReLU(inplace=True)] + ([pool] if pool is not None else [])


class SyncNet(nn.Module):
    """The audio and lip towers of syncnet_python's `S` (num_layers_in_fc_layers=1024); parameter names as saved."""

    def __init__(self, dim: int = 1024):
        super().__init__()
        c2, p2 = nn.Conv2d, nn.MaxPool2d
        self.netcnnaud = nn.Sequential(
            *_block(c2(1, 64, 3, padding=1), 64, nn.BatchNorm2d, p2(1, 1)),
            *_block(c2(64, 192, 3, padding=1), 192, nn.BatchNorm2d, p2(3, stride=(1, 2))),
            *_block(c2(192, 384, 3, padding=1), 384, nn.BatchNorm2d),
            *_block(c2(384, 256, 3, padding=1), 256, nn.BatchNorm2d),
            *_block(c2(256, 256, 3, padding=1), 256, nn.BatchNorm2d, p2(3, stride=2)),
            *_block(c2(256, 512, (5, 4)), 512, nn.BatchNorm2d))
        self.netfcaud = self._head(dim)
        self.netfclip = self._head(dim)
        c3, p3 = nn.Conv3d, nn.MaxPool3d
        self.netcnnlip = nn.Sequential(
            *_block(c3(3, 96, (5, 7, 7), stride=(1, 2, 2)), 96, nn.BatchNorm3d, p3((1, 3, 3), stride=(1, 2, 2))),
            *_block(c3(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), 256, nn.BatchNorm3d,
                    p3((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))),
            *_block(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, nn.BatchNorm3d),
            *_block(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, nn.BatchNorm3d),
            *_block(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, nn.BatchNorm3d, p3((1, 3, 3), stride=(1, 2, 2))),
            *_block(c3(256, 512, (1, 6, 6)), 512, nn.BatchNorm3d))

    @staticmethod
    def _head(dim: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim))

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """[N, 1, 13, 20] MFCC windows -> [N, dim]."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """[N, 3, 5, 224, 224] BGR frame windows, 0-255 -> [N, dim]."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def load_syncnet(path: str | Path, device: str = "cpu") -> SyncNet:
    """SyncNet with the weights of `path` (syncnet_v2.model, or a folder holding it: a state dict, read weights-only
    and loaded strictly), in eval mode. A missing file raises FileNotFoundError naming where it is published, an
    unreadable or foreign one ValueError."""
    path = weight_file(path, WEIGHTS, PUBLISHED)
    state = state_dict(path, "syncnet_python's SyncNet")
    net = SyncNet()
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: not syncnet_python's SyncNet ({str(e).splitlines()[0]})") from None
    return net.to(device).eval()


def mfcc(audio: np.ndarray, rate: int = RATE) -> np.ndarray:
    """[13, steps] MFCCs of int16-scaled mono audio at 100 Hz (python_speech_features' defaults, as syncnet_python
    calls it on the wav's int16 samples)."""
    import python_speech_features

    if rate != RATE:
        raise ValueError(f"SyncNet takes {RATE} Hz audio, got {rate} Hz")
    return np.asarray(python_speech_features.mfcc(audio, rate)).T


def clip_inputs(frames: np.ndarray, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A clip as syncnet_python's evaluate holds it: frames [T, 224, 224, 3] BGR uint8 (or float 0-255) ->
    [3, T, H, W] float; int16-scaled 16 kHz audio -> MFCCs [13, steps]; and the number of windows,
    min(T, samples // 640) - 5."""
    video = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).permute(3, 0, 1, 2)
    coeffs = torch.from_numpy(mfcc(audio).astype(np.float32))
    n = min(len(frames), len(audio) // (RATE // FPS)) - WINDOW
    if n < 1:
        raise ValueError(f"SyncNet needs more than {WINDOW} frames of video and audio, got {len(frames)} frames and "
                         f"{len(audio) / RATE:.2f} s")
    return video, coeffs, n


def windows(video: torch.Tensor, coeffs: torch.Tensor, first: int, last: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows first..last-1: ([n, 3, 5, H, W], [n, 1, 13, 20]), window i starting at frame i and MFCC step 4 i
    (four 10 ms steps per 40 ms frame)."""
    lips = torch.stack([video[:, i : i + WINDOW] for i in range(first, last)])
    sound = torch.stack([coeffs[None, :, 4 * i : 4 * i + 4 * WINDOW] for i in range(first, last)])
    return lips, sound


@torch.no_grad()
def embeddings(net: SyncNet, frames: np.ndarray, audio: np.ndarray, batch: int = BATCH
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(lip [N, dim], audio [N, dim]) embeddings of a clip, the inputs to `field_metrics.sync_scores`; windows are
    built a batch at a time (a 10 s clip's would be ~0.7 GB at once)."""
    video, coeffs, n = clip_inputs(frames, audio)
    dev = next(net.parameters()).device
    lip, aud = [], []
    for i in range(0, n, batch):
        lips, sound = windows(video, coeffs, i, min(n, i + batch))
        lip.append(net.forward_lip(lips.to(dev)).cpu())
        aud.append(net.forward_aud(sound.to(dev)).cpu())
    return torch.cat(lip), torch.cat(aud)
