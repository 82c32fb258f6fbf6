"""Random-weight networks written in the layouts of the published metric weight files, so that the benchmark runs
end to end where the real files are absent (the rehearsal, the tests). Their scores mean nothing; the files are
flagged as not the published ones (`weights.provenance`).

- `pt_inception-2015-12-05-6726825d.pth`: a state dict of pytorch-fid's `fid_inception_v3` (pytorch-fid
  src/pytorch_fid/inception.py:195-217: torchvision's Inception v3, 1008 classes, no aux head, Mixed_5b..7c patched).
- `i3d_torchscript.pt`: a scripted module with the published I3D's call signature (StyleGAN-V metric_utils.py:245,
  called with frechet_video_distance.py:23's keyword arguments); not its architecture, which is not public as code.
- `syncnet_v2.model`: a state dict of syncnet_python's `S` (`shared.evaluation.syncnet.SyncNet`).
- `1k3d68.onnx`, `w600k_r50.onnx`: ONNX graphs with the published signatures (192 px in, 3,309 values out, the input
  normalised inside; 112 px in, 512 out, normalised by the caller), a strided convolution and a linear layer.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import torch

from . import faces, i3d, inception, syncnet


class I3DStandIn(torch.nn.Module):
    """uint8 clips [B, 3, T, H, W] -> features, honouring rescale / resize / return_features as the real one does."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 16, 3)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        y = x.float()
        if rescale:
            y = y / 127.5 - 1
        if resize:
            y = torch.nn.functional.interpolate(y, size=(y.shape[2], 24, 24), mode="trilinear", align_corners=False)
        f = self.conv(y).mean((2, 3, 4))
        return f if return_features else f.softmax(-1)


def write_inception(path: Path) -> None:
    from pytorch_fid import inception as fid

    torch.manual_seed(0)
    with mock.patch.object(fid, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(torch.nn.Module, "load_state_dict", lambda *a, **k: None):
        net = fid.fid_inception_v3()  # its constructor would fetch the published weights: skipped
    torch.save(net.state_dict(), path)


def write_i3d(path: Path) -> None:
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(I3DStandIn()), str(path))


def write_syncnet(path: Path) -> None:
    torch.manual_seed(0)
    torch.save(syncnet.SyncNet().state_dict(), path)


def _onnx_graph(path: Path, size: int, stride: int, width: int, out: int, normalises: bool, seed: int) -> None:
    """Conv (stride = kernel) -> Flatten -> Gemm [-> Tanh]; `normalises`: a Sub and a Mul first, the way a network
    that normalises its own input starts (insightface then feeds raw pixels)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = np.random.default_rng(seed)
    cells = (size // stride) ** 2 * width
    init = [numpy_helper.from_array((0.05 * g.standard_normal((width, 3, stride, stride))).astype(np.float32), "w"),
            numpy_helper.from_array((g.standard_normal((cells, out)) / np.sqrt(cells)).astype(np.float32), "fc")]
    nodes, x = [], "data"
    if normalises:
        init += [numpy_helper.from_array(np.full((1, 3, 1, 1), 127.5, np.float32), "m"),
                 numpy_helper.from_array(np.full((1, 3, 1, 1), 1 / 128, np.float32), "s")]
        nodes += [helper.make_node("Sub", [x, "m"], ["x0"], name="Sub_0"),
                  helper.make_node("Mul", ["x0", "s"], ["x1"], name="Mul_1")]
        x = "x1"
    nodes += [helper.make_node("Conv", [x, "w"], ["c"], name="Conv_2", strides=[stride, stride]),
              helper.make_node("Flatten", ["c"], ["f"], name="Flatten_3"),
              helper.make_node("Gemm", ["f", "fc"], ["y" if normalises else "out"], name="Gemm_4")]
    if normalises:
        nodes.append(helper.make_node("Tanh", ["y"], ["out"], name="Tanh_5"))
    image = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, size, size])
    result = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["None", out])
    model = helper.make_model(helper.make_graph(nodes, "standin", [image], [result], init),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def write_faces(folder: Path, seed: int = 0) -> None:
    _onnx_graph(Path(folder) / faces.LANDMARK_FILE, 192, 12, 4, 3309, True, seed)
    _onnx_graph(Path(folder) / faces.ARCFACE_FILE, 112, 7, 8, 512, False, seed + 1)


def write_all(folder: str | Path) -> Path:
    """Every metric's stand-in file into `folder` (made if absent)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_inception(folder / inception.WEIGHTS)
    write_i3d(folder / i3d.WEIGHTS)
    write_syncnet(folder / syncnet.WEIGHTS)
    write_faces(folder)
    return folder
