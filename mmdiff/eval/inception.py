"""Optional Inception FID (Heusel et al. 2017), for comparison with published numbers, from a weights file
the user supplies: nothing here downloads.

pytorch-fid (preferred) or torch-fidelity provides the network (the TF 2015-12-05 Inception graph ported
to PyTorch); mmdiff feeds it the images and takes the 2048-d pool features into its own
``metrics.fd``. Both packages would fetch their weights from GitHub on first use; here the file comes
from ``eval.inception_weights=PATH`` instead, and a missing file or package is a :class:`UserError`
that says how to get it. The .pth file is a pickle: it is read with ``torch.load(weights_only=True)``,
which unpickles tensors and containers only, never arbitrary objects.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from unittest import mock

import torch
from torch import Tensor

from ..errors import UserError
from .metrics import fd

PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
HOW = (f"pip install pytorch-fid, download {PYTORCH_FID_FILE} from the pytorch-fid GitHub releases "
       f"(github.com/mseitzer/pytorch-fid, release fid_weights), then pass eval.inception_weights=PATH")


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def inception_backend(weights: str | Path) -> str:
    """Which package computes the features ("pytorch_fid" or "torch_fidelity"), after checking that
    ``weights`` is a file and a package is installed."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"eval.inception_weights={weights} is not a file. Inception FID needs the Inception weights "
                        f"file, which mmdiff never downloads: {HOW}")
    if _installed("pytorch_fid"):
        return "pytorch_fid"
    if _installed("torch_fidelity"):
        return "torch_fidelity"
    raise UserError(f"Inception FID needs the pytorch-fid package (or torch-fidelity), which is not installed: {HOW}")


class _InceptionFeatures(torch.nn.Module):
    """Images [B, 3, H, W] in [0, 1] -> pool3 features [B, 2048]; each package resizes to 299 x 299 itself."""

    def __init__(self, backend: str, path: Path):
        super().__init__()
        self.backend = backend
        if backend == "pytorch_fid":
            import pytorch_fid.inception as inception

            def local_weights(url, *args, **kwargs):  # stands in for the download in fid_inception_v3
                return torch.load(path, map_location="cpu", weights_only=True)

            with mock.patch.object(inception, "load_state_dict_from_url", local_weights):
                self.net = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
        else:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                   feature_extractor_weights_path=str(path))
        self.net.eval()

    def forward(self, x: Tensor) -> Tensor:
        if self.backend == "pytorch_fid":
            return self.net(x)[0].flatten(1)
        return self.net((x * 255).round().to(torch.uint8))[0].flatten(1)  # torch-fidelity takes uint8 images


@torch.no_grad()
def inception_features(images: Tensor, weights: str | Path, batch_size: int = 50,
                       device: torch.device | str = "cpu") -> Tensor:
    """Images [N, C, H, W] in [0, 1] (C = 1 is repeated to RGB) -> Inception pool3 features [N, 2048]."""
    path = Path(weights).expanduser()
    model = _InceptionFeatures(inception_backend(path), path).to(device)
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float().to(device)
        out.append(model(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x).double().cpu())
    return torch.cat(out)


def inception_fid(real: Tensor, fake: Tensor, weights: str | Path, **kwargs) -> float:
    """FID between two image sets [N, C, H, W] in [0, 1], from the weights file ``weights``."""
    return fd(inception_features(real, weights, **kwargs), inception_features(fake, weights, **kwargs))
