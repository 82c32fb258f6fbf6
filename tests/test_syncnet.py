"""SyncNet as syncnet_python builds, loads and feeds it (`shared.evaluation.syncnet`), checked against the reference
code (joonson/syncnet_python 6efbb1c) re-implemented step by step here; random weights (the real file is not
shipped)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("python_speech_features")

from shared.evaluation import syncnet as SN  # noqa: E402
from shared.evaluation.field_metrics import sync_scores  # noqa: E402

# SyncNetModel.py lines 24-95: every layer with weights in S's four Sequentials, by index, and its weight's shape
# (conv/linear; the batch norms after them hold [C] weights and running statistics)
LAYERS = {
    "netcnnaud": {0: (64, 1, 3, 3), 4: (192, 64, 3, 3), 8: (384, 192, 3, 3), 11: (256, 384, 3, 3),
                  14: (256, 256, 3, 3), 18: (512, 256, 5, 4)},
    "netfcaud": {0: (512, 512), 3: (1024, 512)},
    "netfclip": {0: (512, 512), 3: (1024, 512)},
    "netcnnlip": {0: (96, 3, 5, 7, 7), 4: (256, 96, 1, 5, 5), 8: (256, 256, 1, 3, 3), 11: (256, 256, 1, 3, 3),
                  14: (256, 256, 1, 3, 3), 18: (512, 256, 1, 6, 6)},
}
NORMS = {"netcnnaud": {1: 64, 5: 192, 9: 384, 12: 256, 15: 256, 19: 512}, "netfcaud": {1: 512}, "netfclip": {1: 512},
         "netcnnlip": {1: 96, 5: 256, 9: 256, 12: 256, 15: 256, 19: 512}}


def random_net(seed: int = 0) -> SN.SyncNet:
    torch.manual_seed(seed)
    net = SN.SyncNet()
    with torch.no_grad():  # batch-norm statistics away from their identity defaults
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_the_state_dict_is_syncnet_pythons():
    state = SN.SyncNet().state_dict()
    want = {f"{seq}.{i}.weight": shape for seq, layers in LAYERS.items() for i, shape in layers.items()}
    want |= {f"{seq}.{i}.{k}": (c,) for seq, norms in NORMS.items() for i, c in norms.items()
             for k in ("weight", "bias", "running_mean", "running_var")}
    want |= {f"{seq}.{i}.bias": (shape[0],) for seq, layers in LAYERS.items() for i, shape in layers.items()}
    got = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert got == want


def test_load_syncnet_reads_the_file_and_refuses_others(tmp_path):
    """syncnet_v2.model is a state dict that `SyncNetInstance.loadParameters` (lines 215-225) reads with torch.load
    and copies by name; one saved by a torch older than 0.4.1 has no num_batches_tracked (loaded too)."""
    net = random_net()
    old = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "syncnet_v2.model")
    got = SN.load_syncnet(tmp_path)  # a folder holding the file
    x = torch.rand(2, 3, 5, 224, 224) * 255
    with torch.no_grad():
        assert torch.equal(got.forward_lip(x), net.forward_lip(x)) and not got.training
    with pytest.raises(FileNotFoundError, match="robots.ox.ac.uk"):
        SN.load_syncnet(tmp_path / "nothing")
    torch.save({"netcnnaud.0.weight": torch.zeros(1)}, tmp_path / "other.model")
    with pytest.raises(ValueError, match="other.model: not syncnet_python's SyncNet"):
        SN.load_syncnet(tmp_path / "other.model")


def reference_embeddings(net: SN.SyncNet, images: list[np.ndarray], audio: np.ndarray, batch_size: int):
    """SyncNetInstance.evaluate, lines 65-121: the frames stacked and transposed to [1, 3, T, H, W] floats, MFCCs of
    the int16 samples transposed to [1, 1, 13, steps], min_length = min(frames, floor(samples / 640)), windows
    0..min_length-6 in batches: frames v..v+4 and MFCC steps 4v..4v+19."""
    import python_speech_features

    im = np.transpose(np.expand_dims(np.stack(images, axis=3), axis=0), (0, 3, 4, 1, 2))
    imtv = torch.from_numpy(im.astype(float)).float()
    mfcc = np.stack([np.array(i) for i in zip(*python_speech_features.mfcc(audio, 16000))])
    cct = torch.from_numpy(np.expand_dims(np.expand_dims(mfcc, axis=0), axis=0).astype(float)).float()
    lastframe = min(len(images), math.floor(len(audio) / 640)) - 5
    im_feat, cc_feat = [], []
    with torch.no_grad():
        for i in range(0, lastframe, batch_size):
            frames = range(i, min(lastframe, i + batch_size))
            im_feat.append(net.forward_lip(torch.cat([imtv[:, :, v : v + 5, :, :] for v in frames], 0)))
            cc_feat.append(net.forward_aud(torch.cat([cct[:, :, :, v * 4 : v * 4 + 20] for v in frames], 0)))
    return torch.cat(im_feat, 0), torch.cat(cc_feat, 0)


def test_embeddings_are_syncnet_pythons_evaluate():
    g = np.random.default_rng(0)
    images = [g.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(11)]
    audio = (3000 * g.standard_normal(int(0.47 * 16000))).astype(np.int16)  # shorter than the video: 11 -> 6 windows
    net = random_net(1)
    lip, aud = SN.embeddings(net, np.stack(images), audio, batch=4)
    ref_lip, ref_aud = reference_embeddings(net, images, audio, 4)
    assert lip.shape == (6, 1024) and torch.equal(lip, ref_lip) and torch.equal(aud, ref_aud)
    scores = sync_scores(lip, aud, vshift=2)
    assert np.isfinite(scores["sync_d"]) and scores["sync_c"] >= 0 and -2 <= scores["offset"] <= 2
    with pytest.raises(ValueError, match="more than 5 frames"):
        SN.embeddings(net, np.stack(images[:5]), audio)
    with pytest.raises(ValueError, match="16000 Hz"):
        SN.mfcc(audio, 22050)
