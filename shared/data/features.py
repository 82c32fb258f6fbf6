"""Audio features at 50 Hz (two per 25 fps video frame), pluggable by name:

- `logmel`: 80-band log-mel, 16 kHz, 25 ms window, hop 320 (20 ms), built in;
- `hubert-base:PATH`, `hubert-large:PATH`, `hubert-xlarge:PATH`, `wav2vec2-base:PATH`, `wav2vec2-large:PATH`:
  torchaudio.models architectures with a state dict from a local file (no downloads); the conv front-end has
  stride 320 at 16 kHz, so they are 50 Hz too. `@N` after the path picks transformer layer N (default: last).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

SR = 16000
HOP = 320  # 20 ms at 16 kHz -> 50 Hz

SSL_ARCHS = {
    "hubert-base": "hubert_base",
    "hubert-large": "hubert_large",
    "hubert-xlarge": "hubert_xlarge",
    "wav2vec2-base": "wav2vec2_base",
    "wav2vec2-large": "wav2vec2_large",
}


class AudioFeatures:
    name: str
    dim: int

    def spec(self) -> dict:
        return {"name": self.name, "dim": self.dim, "rate": 50}

    def raw(self, wav: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, wav: np.ndarray | torch.Tensor, video_frames: int) -> np.ndarray:
        """16 kHz mono [S] -> float32 [2 * video_frames, dim]: frames 2t, 2t+1 cover video frame t. The audio is
        zero-padded or cut to the video's duration first."""
        wav = torch.as_tensor(np.asarray(wav, dtype=np.float32))
        need = video_frames * 2 * HOP
        wav = wav[:need] if len(wav) >= need else torch.cat([wav, wav.new_zeros(need - len(wav))])
        feats = self.raw(wav)
        n = 2 * video_frames
        if len(feats) < n:  # front-ends that drop edge frames: repeat the last one
            feats = torch.cat([feats, feats[-1:].expand(n - len(feats), -1)])
        return feats[:n].float().numpy()


class LogMel(AudioFeatures):
    def __init__(self, n_mels: int = 80):
        import torchaudio

        self.name, self.dim = "logmel", n_mels
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=SR, n_fft=512, win_length=400, hop_length=HOP,
                                                        n_mels=n_mels, f_min=20.0, f_max=7600.0, center=True,
                                                        power=2.0)

    CHUNK = 1500  # feature frames (30 s) per transform: memory flat in the audio's length

    def raw(self, wav: torch.Tensor) -> torch.Tensor:
        """[1 + len // 320, n_mels]: frame i is centred on sample 320 i, computed CHUNK frames at a time. A chunk
        takes one hop of context on each side (more than the 256-sample half-window), so every frame sees the same
        samples as in one transform of the whole signal, the reflect padding at its two ends included."""
        n = len(wav) // HOP + 1
        parts = []
        for a in range(0, n, self.CHUNK):
            b = min(n, a + self.CHUNK)
            lo, hi = max(0, (a - 1) * HOP), min(len(wav), b * HOP)
            first = a - lo // HOP
            parts.append(self._logmel(wav[lo:hi])[first : first + b - a])
        return torch.cat(parts)

    def _logmel(self, wav: torch.Tensor) -> torch.Tensor:
        # scaled so that speech lands roughly in [-1, 2]
        return ((self.mel(wav).clamp_min(1e-8).log() + 8.0) / 4.0).T


class SSLFeatures(AudioFeatures):
    """A self-supervised speech model (HuBERT / wav2vec 2.0) from torchaudio.models, weights from a local file."""

    def __init__(self, arch: str, path: str, layer: int | None = None):
        import torchaudio

        if arch not in SSL_ARCHS:
            raise ValueError(f"unknown audio feature architecture {arch!r}; known: {sorted(SSL_ARCHS)}")
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"audio feature weights {p} not found (give a local state-dict file)")
        self.model = getattr(torchaudio.models, SSL_ARCHS[arch])().eval()
        state = torch.load(p, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"{p}: not a {arch} state dict; missing {len(missing)} keys, e.g. {missing[:3]}")
        self.layer = layer
        self.name = f"{arch}:{p.name}" + (f"@{layer}" if layer is not None else "")
        self.dim = self.model.encoder.feature_projection.projection.out_features
        self.path = p

    def spec(self) -> dict:
        return {**super().spec(), "path": str(self.path.resolve()), "layer": self.layer}

    def raw(self, wav: torch.Tensor) -> torch.Tensor:
        # centre the 400-sample receptive fields on the 20 ms grid, like logmel's centred frames
        x = torch.nn.functional.pad(wav, (200, 200))[None]
        layers, _ = self.model.extract_features(x, num_layers=self.layer)
        return layers[-1][0]


class FeatureError(UserError, ValueError):
    """An audio feature spec that names no usable front-end (unknown architecture, missing or foreign weights)."""


def get_audio_features(spec: str) -> AudioFeatures:
    """`logmel`, or `ARCH:PATH[@LAYER]` (see the module docstring); a spec that cannot be built is a `FeatureError`
    naming it."""
    if spec == "logmel":
        return LogMel()
    arch, sep, rest = spec.partition(":")
    if not sep:
        raise FeatureError(f"audio features {spec!r}: use 'logmel' or ARCH:PATH with ARCH in {sorted(SSL_ARCHS)}")
    path, _, layer = rest.partition("@")
    if layer and not layer.isdigit():
        raise FeatureError(f"audio features {spec!r}: the layer after '@' must be a number, got {layer!r}")
    try:
        return SSLFeatures(arch, path, int(layer) if layer else None)
    except (ValueError, OSError, RuntimeError) as e:
        raise FeatureError(f"audio features {spec!r}: {e}") from None
