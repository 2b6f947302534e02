"""Patch feature extractors: a small registry of backbones built with MONAI (no torchvision).

Each :class:`BackboneSpec` names a builder, the input size patches are resized to, the
normalization, and the output dimension. The default, ``resnet50_trunc``, is the extractor of
CLAM and of the paper: an ImageNet ResNet-50 cut after ``layer3`` with global average pooling
(1024-d).

Weights are loaded from a local file in torchvision's state-dict format (``conv1.weight``,
``layer1.0.conv1.weight``, ..., ``fc.bias``; e.g. torchvision's ``resnet50-0676ba61.pth``),
with strict key and shape checking. Nothing is ever downloaded. Random weights are only used
when asked for explicitly, and the resulting :class:`FeatureExtractor` says so
(``unusable_for_science``), so that the bags it writes are marked.

Adding a backbone: ``register_backbone(BackboneSpec(name, build, input_size, mean, std, dim))``
where ``build()`` returns a module whose ``state_dict`` keys match the weights file and
``trunk(module)`` maps the loaded module to one returning (B, dim) features.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from deref.errors import DataError
from deref.fileio import file_sha256

log = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Seed of ``--random-weights`` initializations, so that smoke-test runs are reproducible.
RANDOM_WEIGHTS_SEED = 0


def torchvision_resnet(
    depth: int, num_classes: int | None = 1000, spatial_dims: int = 2, in_channels: int = 3
) -> nn.Module:
    """A MONAI ResNet laid out exactly like torchvision's (7x7 stride-2 stem, max pool, 1x1
    projection shortcuts without bias), so torchvision state dicts load key for key.

    ``num_classes=None`` builds it without the final ``fc``.
    """
    from monai.networks.nets import resnet

    builders = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}
    return builders[depth](
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        bias_downsample=False,
        shortcut_type="B",
        num_classes=num_classes or 1,
        feed_forward=num_classes is not None,
    )


class ResNetTrunk(nn.Module):
    """A MONAI ResNet's stem and the first ``n_layers`` stages, then global average pooling.

    Input (B, C, *spatial) -> features (B, width of the last kept stage).
    """

    def __init__(self, net: nn.Module, n_layers: int = 3) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act = net.conv1, net.bn1, net.act
        self.maxpool = None if net.no_max_pool else net.maxpool
        self.layers = nn.Sequential(*[getattr(net, f"layer{i}") for i in range(1, n_layers + 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.layers(x)
        return torch.flatten(x, 2).mean(dim=2)


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry: ``build()`` gives the module the weights file loads into;
    ``trunk(module)`` gives the (B, 3, S, S) -> (B, dim) extractor; ``input_size`` = S."""

    name: str
    build: Callable[[], nn.Module]
    trunk: Callable[[nn.Module], nn.Module]
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dim: int
    description: str = ""
    weights_hint: str = ""


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to :data:`BACKBONES` (replacing an entry of the same name)."""
    BACKBONES[spec.name] = spec
    return spec


register_backbone(
    BackboneSpec(
        name="resnet50_trunc",
        build=lambda: torchvision_resnet(50),
        trunk=lambda net: ResNetTrunk(net, 3),
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dim=1024,
        description="ImageNet ResNet-50 cut after layer3 + average pooling (CLAM, the paper)",
        weights_hint="torchvision resnet50 ImageNet state dict (resnet50-0676ba61.pth or resnet50-19c8e357.pth)",
    )
)
register_backbone(
    BackboneSpec(
        name="resnet50",
        build=lambda: torchvision_resnet(50),
        trunk=lambda net: ResNetTrunk(net, 4),
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dim=2048,
        description="ImageNet ResNet-50 through layer4 + average pooling",
        weights_hint="torchvision resnet50 ImageNet state dict",
    )
)
register_backbone(
    BackboneSpec(
        name="resnet18",
        build=lambda: torchvision_resnet(18),
        trunk=lambda net: ResNetTrunk(net, 4),
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dim=512,
        description="ImageNet ResNet-18 + average pooling (fast; for quick runs)",
        weights_hint="torchvision resnet18 ImageNet state dict (resnet18-f37072fd.pth)",
    )
)


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise DataError(f"unknown backbone {name!r}; available: {', '.join(sorted(BACKBONES))}") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file (``.safetensors``, or a torch file loaded with
    ``weights_only=True`` so no code is unpickled); unwraps ``{"state_dict": ...}`` /
    ``{"model": ...}`` and a ``module.`` prefix (DataParallel checkpoints)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file {path}: not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and safetensors errors alike
        raise DataError(
            f"weights file {path}: cannot be read as a state dict: {' '.join(str(exc).split())[:300]}"
        ) from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DataError(f"weights file {path}: expected a state dict (parameter name -> tensor)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state_dict`` into ``model`` requiring the same keys and shapes; returns the model.

    Only ``*.num_batches_tracked`` may be missing (old torchvision files lack it). Raises
    :class:`DataError` naming the file and the first offending keys.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} missing keys ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})"
        )
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:4])}{', ...' if len(unexpected) > 4 else ''})"
        )
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:3])})")
    if problems:
        raise DataError(f"weights file {source} does not fit the architecture: " + "; ".join(problems))
    full = {}
    for k, v in expected.items():
        full[k] = state_dict[k].to(v.dtype) if k in state_dict else torch.zeros(v.shape, dtype=v.dtype)
    model.load_state_dict(full, strict=True)
    return model


class FeatureExtractor(nn.Module):
    """uint8 patches (B, 3, S, S) -> features (B, dim): scales to [0, 1], normalizes, runs the
    backbone's trunk. Normalizing here keeps patches uint8 (4x less data) until the device."""

    def __init__(
        self, spec: BackboneSpec, trunk: nn.Module, weights: str = "", weights_sha256: str = ""
    ) -> None:
        super().__init__()
        self.spec = spec
        self.trunk = trunk
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1) * 255.0, persistent=False)

    @property
    def unusable_for_science(self) -> bool:
        return not self.weights

    @property
    def dim(self) -> int:
        return self.spec.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        return self.trunk(x.contiguous(memory_format=torch.channels_last))

    def provenance(self) -> dict:
        """Attributes stored with every bag this extractor writes."""
        return {
            "backbone": self.spec.name,
            "feature_dim": self.spec.dim,
            "weights_file": self.weights or "none (random weights)",
            "weights_sha256": self.weights_sha256,
            "unusable_for_science": bool(self.unusable_for_science),
        }


def build_backbone(
    name: str = "resnet50_trunc",
    weights: str | os.PathLike | None = None,
    *,
    random_weights: bool = False,
) -> FeatureExtractor:
    """The eval-mode :class:`FeatureExtractor` ``name`` with ``weights`` loaded strictly.

    Without ``weights``, ``random_weights=True`` must be passed; the network is then
    initialized from a fixed seed and a warning is logged.
    """
    spec = get_backbone_spec(name)
    if weights is None and not random_weights:
        raise DataError(
            f"backbone {name!r} needs pretrained weights: pass --weights FILE ({spec.weights_hint}); "
            "weights are never downloaded. --random-weights runs without them for smoke tests only"
        )
    if weights is not None and random_weights:
        raise DataError("pass either --weights or --random-weights, not both")
    if weights is not None:
        net = load_strict(spec.build(), read_state_dict(weights), str(weights))
        digest = file_sha256(weights)
        source = str(Path(weights).resolve())
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            net = spec.build()
        digest, source = "", ""
        log.warning(
            "backbone %s has RANDOM weights: its features carry no pretrained knowledge and are "
            "unusable for science; outputs are marked unusable_for_science=True",
            name,
        )
    model = FeatureExtractor(spec, spec.trunk(net), source, digest)
    return model.eval().to(memory_format=torch.channels_last)
