"""Audio features at 50 Hz (two per 25 fps video frame), pluggable by name:

- `logmel`: 80-band log-mel, 16 kHz, 25 ms window, hop 320 (20 ms), built in;
- `hubert-base:PATH`, `hubert-large:PATH`, `hubert-xlarge:PATH`, `wav2vec2-base:PATH`, `wav2vec2-large:PATH`,
  `wav2vec2-large-lv60k:PATH`: torchaudio.models architectures with weights from a local torchaudio state dict,
  fairseq checkpoint or Hugging Face folder (`shared.data.speech_encoders`: no downloads, the architecture checked
  against the name); the conv front-end has stride 320 at 16 kHz, so they are 50 Hz too. `@N` after the path picks
  transformer layer N (default: the last, with the final layer norm of pre-LN models, as fairseq and Hugging Face
  give it); `@all` keeps every layer ([L, D] a frame, flattened) for a learned weighted sum in the model
  (`model.audio_layers`, Hallo-style).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .speech_encoders import ARCHS, EncoderError, build

SR = 16000
HOP = 320  # 20 ms at 16 kHz -> 50 Hz

SSL_ARCHS = tuple(ARCHS)


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
    """A self-supervised speech model (HuBERT / wav2vec 2.0) from torchaudio.models, weights from a local file or
    folder. `layer`: transformer layer 1..L, None for the last, "all" for every layer."""

    def __init__(self, arch: str, path: str, layer: int | str | None = None):
        self.model, config = build(arch, path)
        self.normalize = config["extractor_mode"] == "layer_norm"  # as torchaudio's bundles and fairseq's task
        self.final_norm = config["encoder_layer_norm_first"]
        self.num_layers = config["encoder_num_layers"]
        if isinstance(layer, int) and not 1 <= layer <= self.num_layers:
            raise EncoderError(f"{path}: layer {layer} of a {self.num_layers}-layer {arch}")
        self.layer, self.path = layer, Path(path)
        self.name = f"{arch}:{self.path.name}" + (f"@{layer}" if layer is not None else "")
        width = config["encoder_embed_dim"]
        self.layers = self.num_layers if layer == "all" else 1
        self.dim = width * self.layers

    def spec(self) -> dict:
        return {**super().spec(), "path": str(self.path.resolve()), "layer": self.layer, "layers": self.layers}

    CHUNK = 1500  # 50 Hz frames (30 s) per forward: attention is quadratic in the frames it sees
    CONTEXT = 100  # frames (2 s) of audio on each side of a chunk, seen but not kept

    def raw(self, wav: torch.Tensor) -> torch.Tensor:
        """[len // 320 + 1, dim]: frame i centred on sample 320 i. Long audio goes through in chunks of CHUNK
        frames, each seeing CONTEXT frames more on both sides (speech encoders are trained on utterances of
        seconds: minutes at once would cost memory quadratic in the length and look like no training input)."""
        if self.normalize:  # over the utterance (torchaudio's _Wav2Vec2Model: layer_norm over the waveform)
            wav = torch.nn.functional.layer_norm(wav, wav.shape)
        n = len(wav) // HOP + 1
        parts = []
        for a in range(0, n, self.CHUNK):
            b = min(n, a + self.CHUNK)
            lo, hi = max(0, a - self.CONTEXT), min(n, b + self.CONTEXT)
            feats = self._forward(wav[lo * HOP : hi * HOP])
            parts.append(feats[a - lo : a - lo + b - a])
        out = torch.cat(parts)
        return out if len(out) >= n else torch.cat([out, out[-1:].expand(n - len(out), -1)])

    def _forward(self, wav: torch.Tensor) -> torch.Tensor:
        # centre the 400-sample receptive fields on the 20 ms grid, like logmel's centred frames
        x = torch.nn.functional.pad(wav, (200, 200))[None]
        last = self.num_layers if self.layer in (None, "all") else self.layer
        layers, _ = self.model.extract_features(x, num_layers=last)
        layers = [h[0] for h in layers]
        if self.final_norm and last == self.num_layers:  # pre-LN: the encoder's output is normalised once more
            layers[-1] = self.model.encoder.transformer.layer_norm(layers[-1])
        return torch.cat(layers, -1) if self.layer == "all" else layers[-1]


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
    if layer and not (layer.isdigit() or layer == "all"):
        raise FeatureError(f"audio features {spec!r}: after '@' give a layer number or 'all', got {layer!r}")
    try:
        return SSLFeatures(arch, path, int(layer) if layer.isdigit() else layer or None)
    except (ValueError, OSError, RuntimeError) as e:
        raise FeatureError(f"audio features {spec!r}: {e}") from None
