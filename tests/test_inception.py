"""FID through pytorch-fid's own network and pipeline (`shared.evaluation.inception`), random weights in the layout of
its weights file; the reference is pytorch-fid itself (its image-file pipeline and its distance)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("pytorch_fid")

from pytorch_fid import fid_score  # noqa: E402

from shared.evaluation import inception as I  # noqa: E402
from shared.evaluation import standins  # noqa: E402
from shared.evaluation.field_metrics import frechet_distance  # noqa: E402


def random_fid_weights(path) -> None:
    """A state dict of pytorch-fid's `fid_inception_v3`, as the published file holds it, random."""
    standins.write_inception(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fid")
    random_fid_weights(folder / I.WEIGHTS)
    return folder


def frames(n: int, seed: int) -> np.ndarray:
    from skimage import data

    g = np.random.default_rng(seed)
    photo = data.astronaut()
    out = []
    for _ in range(n):
        y, x = g.integers(0, 512 - 96, 2)
        out.append(photo[y : y + 96, x : x + 96])
    return np.stack(out)


def test_features_are_pytorch_fids_get_activations(weights, tmp_path):
    from PIL import Image

    net = I.load_inception(weights)
    imgs = frames(5, 0)
    files = []
    for i, im in enumerate(imgs):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(files[-1])
    want = fid_score.get_activations(files, net, batch_size=5, dims=2048, num_workers=0)
    got = I.features(net, imgs, batch=5)
    assert got.shape == (5, 2048) and np.allclose(got, want, rtol=0, atol=1e-6)


def test_fid_is_pytorch_fids(weights):
    net = I.load_inception(weights)
    a, b = I.features(net, frames(12, 1)), I.features(net, frames(12, 2))
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # 12 samples of 2048-d features: SciPy warns of the singular product
        warnings.simplefilter("ignore")
        got = frechet_distance(a, b)
        try:
            want = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
        except TypeError:  # pragma: no cover - a SciPy without sqrtm's `disp`, which pytorch-fid 0.3.0 passes
            pytest.skip("pytorch-fid's calculate_frechet_distance does not run with this SciPy")
    assert got == pytest.approx(want, rel=1e-6)


def test_load_inception_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="pytorch-fid/releases"):
        I.load_inception(tmp_path)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="x.pth: not pytorch-fid's FID Inception"):
        I.load_inception(tmp_path / "x.pth")
    with pytest.raises(ValueError, match="uint8"):
        I.features(torch.nn.Linear(1, 1), np.zeros((2, 8, 8, 3), np.float32))
