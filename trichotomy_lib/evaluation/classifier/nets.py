"""Networks for the reference classifier (DESIGN step 3): 8 findings → 8 logits.

Two architectures, chosen by ``classifier.arch``:

- ``"cnn"``: ``SmallCNN``, a few conv blocks (conv-BN-ReLU ×2, max-pool) → global average
  pool → linear. ~290k parameters at the default width 32 / depth 3; trains in a minute or
  two on 2 CPU cores at 32 px. The default for PhantomCXR.
- ``"densenet121"``: the CheXNet setup the paper uses for its utility table — torchvision's
  DenseNet-121 with its classifier replaced by ``Linear(1024, 8)`` (8 sigmoid outputs, Rajpurkar
  et al. 2017). ImageNet weights come from a local file (``classifier.weights``); torchvision
  is imported only inside ``build_densenet121`` (it is the optional ``vision`` extra).

Every network takes grayscale images ``(n, 1, H, W)`` in [-1, 1] (``ImageSet.tensor``) and
returns logits ``(n, 8)``; the sigmoid is applied by ``Classifier.predict_proba``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ...data.imageset import N_LABELS
from ...device import channels_last

ARCHS = ("cnn", "densenet121")

# ImageNet statistics the torchvision weights were trained with (RGB).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class SmallCNN(nn.Module):
    """``depth`` blocks of [conv3×3-BN-ReLU, conv3×3-BN-ReLU, max-pool 2], channels
    ``width·2^i``, then global average pooling and a linear layer to ``n_out`` logits.

    width: channels of the first block (default 32, range 4–128).
    depth: number of blocks (default 3, range 1–log2(image size)); each halves the resolution.
    """

    def __init__(self, width: int = 32, depth: int = 3, n_out: int = N_LABELS):
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"SmallCNN needs width >= 1 and depth >= 1, got width={width}, depth={depth}")
        layers, c_in = [], 1
        for i in range(depth):
            c_out = width * 2**i
            for c in (c_in, c_out):
                layers += [nn.Conv2d(c, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class DenseNetCXR(nn.Module):
    """Grayscale [-1, 1] → 3-channel ImageNet-normalised input → DenseNet-121 → 8 logits."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.add(1.0).mul(0.5).expand(-1, 3, -1, -1) - self.mean) / self.std
        return self.backbone(x)


def build_densenet121(weights: str | os.PathLike | None = None, n_out: int = N_LABELS) -> DenseNetCXR:
    """torchvision DenseNet-121 with ``Linear(1024, n_out)`` as classifier (CheXNet).

    weights: a local ``.safetensors`` file holding torchvision's ``densenet121`` state dict
    (ImageNet weights; the 1000-class ``classifier.*`` entries are ignored). None: random
    initialisation (used when loading a trained classifier, whose own file holds every weight).
    Nothing is downloaded.
    """
    try:
        import torchvision
    except ImportError:
        raise ImportError(
            "classifier.arch='densenet121' needs torchvision (pip install 'trichotomy[vision]'); "
            "use arch='cnn' on machines without it"
        ) from None
    net = torchvision.models.densenet121(weights=None)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"classifier.weights: {path} does not exist (a local .safetensors of torchvision's densenet121)")
        if path.suffix != ".safetensors":
            raise ValueError(f"classifier.weights: {path} must be a .safetensors file (pickled checkpoints are not loaded)")
        from safetensors.torch import load_file

        state = {k: v for k, v in load_file(path).items() if not k.startswith("classifier.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("classifier.")]
        if missing or unexpected:
            raise ValueError(
                f"classifier.weights: {path} is not a torchvision densenet121 state dict "
                f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]})"
            )
    net.classifier = nn.Linear(net.classifier.in_features, n_out)
    return DenseNetCXR(net)


def build_net(hparams: dict, weights: str | os.PathLike | None = None) -> nn.Module:
    """The network named by ``hparams["arch"]`` (with ``width``/``depth`` for ``cnn``), its
    convolution weights in channels-last layout (``device.channels_last``: the same values,
    NHWC convolutions, faster on CPU; saved files are contiguous)."""
    arch = hparams["arch"]
    if arch == "cnn":
        return channels_last(SmallCNN(int(hparams["width"]), int(hparams["depth"])))
    if arch == "densenet121":
        return channels_last(build_densenet121(weights))
    raise ValueError(f"classifier.arch={arch!r}: unknown; choose one of {list(ARCHS)}")


def n_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
