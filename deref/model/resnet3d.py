"""A 3D ResNet trained from scratch on ROI cubes (the paper's end-to-end MRI encoder).

Layout (MedicalNet / MONAI ``resnet10``-``resnet50`` naming, Chen et al. 2019; Hara et al.
2018): a 7^3 stride-2 stem convolution, four stages of :class:`BasicBlock3d` (depths 10, 18,
34) or :class:`Bottleneck3d` (depth 50) with widths ``w, 2w, 4w, 8w`` (stages 2-4 stride 2,
projection shortcuts: 1^3 convolution without bias + norm), and global average pooling. The
output is one vector of :meth:`ResNet3d.out_dim` = ``8w`` (basic) or ``32w`` (bottleneck)
values per cube.

Two choices differ from MedicalNet, both for small cubes and small batches:

* **GroupNorm** (default) instead of BatchNorm: the trainer's default step is one patient,
  and BatchNorm's batch statistics over one sample (a few voxels in the last stage) are
  noise, and make a patient's output depend on the other patients of its batch. GroupNorm
  normalizes each sample on its own, so training works at batch size 1 and a batched forward
  equals the per-patient forwards. Groups: ``gcd(channels, 8)`` (8 groups for power-of-two
  widths >= 8), so the last stage, a few voxels wide, still normalizes over several
  channels per group (InstanceNorm would normalize a 1-voxel map to a constant). A
  consequence worth knowing: the stem convolution has no bias, so the encoder is invariant
  to a positive rescaling of a whole cube; only contrast within the cube carries signal
  (MRI intensities are in arbitrary units anyway). ``norm="batch"`` is available for large
  batches (and gives MONAI's network exactly).
* **No max pooling** after the stem (MONAI's ``no_max_pool=True``): on 32^3-64^3 cubes the
  total downsampling is 16x, leaving a 2^3-4^3 map for the last stage instead of 1^3-2^3.

Shapes: a cube batch ``(B, C_in, G, G, G)`` -> ``(B, out_dim)``.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from deref.errors import ConfigError

#: depth -> (block kind, blocks per stage), as MONAI's ``resnet10`` ... ``resnet50``.
RESNET3D_LAYOUTS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}
NORMS = ("group", "batch")
#: Upper bound on the number of GroupNorm groups (see the module docstring).
MAX_GROUPS = 8


def norm3d(channels: int, norm: str = "group") -> nn.Module:
    """``GroupNorm(gcd(channels, 8), channels)`` or ``BatchNorm3d(channels)``."""
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    return nn.GroupNorm(math.gcd(channels, MAX_GROUPS), channels)


def conv3d(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv3d:
    """A bias-free cubic convolution with 'same' padding (before striding)."""
    return nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock3d(nn.Module):
    """3^3 conv-norm-ReLU, 3^3 conv-norm, + shortcut, ReLU: (B, c_in, L^3) -> (B, planes, (L/stride)^3)."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, norm: str = "group") -> None:
        super().__init__()
        self.conv1 = conv3d(c_in, planes, 3, stride)
        self.norm1 = norm3d(planes, norm)
        self.conv2 = conv3d(planes, planes, 3)
        self.norm2 = norm3d(planes, norm)
        self.act = nn.ReLU()
        self.shortcut = _shortcut(c_in, planes, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.act(out + skip)


class Bottleneck3d(nn.Module):
    """1^3 (planes), 3^3 (planes, stride), 1^3 (4 planes), each with norm, + shortcut, ReLU."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, norm: str = "group") -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = conv3d(c_in, planes, 1)
        self.norm1 = norm3d(planes, norm)
        self.conv2 = conv3d(planes, planes, 3, stride)
        self.norm2 = norm3d(planes, norm)
        self.conv3 = conv3d(planes, out, 1)
        self.norm3 = norm3d(out, norm)
        self.act = nn.ReLU()
        self.shortcut = _shortcut(c_in, out, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.act(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.act(out + skip)


def _shortcut(c_in: int, c_out: int, stride: int, norm: str) -> nn.Module | None:
    """The projection shortcut (MONAI's type "B", no bias) where the shape changes, else identity."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(conv3d(c_in, c_out, 1, stride), norm3d(c_out, norm))


class ResNet3d(nn.Module):
    """A 3D ResNet of ``depth`` 10, 18, 34 or 50 and base ``width``: (B, in_channels, G, G, G) -> (B, out_dim).

    Parameters
    ----------
    depth : int
        10, 18, 34 (basic blocks) or 50 (bottlenecks); see :data:`RESNET3D_LAYOUTS`.
    width : int
        Channels of the stem and the first stage (64 in MedicalNet; 32 here by default so a
        10-layer net on 32^3-64^3 cubes trains on a CPU).
    in_channels : int
        Channels of the input cube (1 for one sequence; the number of sequences when the
        sequences are stacked as channels).
    norm : str
        "group" (default; see the module docstring) or "batch".
    """

    def __init__(self, depth: int = 10, width: int = 32, in_channels: int = 1, norm: str = "group") -> None:
        super().__init__()
        if depth not in RESNET3D_LAYOUTS:
            raise ConfigError(f"3D ResNet depth {depth}; expected one of {sorted(RESNET3D_LAYOUTS)}")
        if norm not in NORMS:
            raise ConfigError(f"3D ResNet norm {norm!r}; expected one of {NORMS}")
        kind, blocks = RESNET3D_LAYOUTS[depth]
        block = BasicBlock3d if kind == "basic" else Bottleneck3d
        self.depth, self.width = depth, width
        self.conv1 = conv3d(in_channels, width, 7, stride=2)
        self.norm1 = norm3d(width, norm)
        self.act = nn.ReLU()
        c = width
        for i, n in enumerate(blocks):
            planes = width * 2**i
            stage = []
            for j in range(n):
                stage.append(block(c, planes, stride=2 if (i > 0 and j == 0) else 1, norm=norm))
                c = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.out_dim = c
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He init (fan-out) of the convolutions, norms at weight 1 and bias 0 (as MONAI)."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.GroupNorm, nn.BatchNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last stage's map ``(B, out_dim, g, g, g)``, g = ceil(G / 16)."""
        x = self.act(self.norm1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, G, G, G)`` -> globally average-pooled ``(B, out_dim)``."""
        return self.feature_map(x).mean(dim=(2, 3, 4))


def cubes(x: Tensor, grid: int) -> Tensor:
    """Flattened cubes ``(B, G**3)`` -> ``(B, 1, G, G, G)`` (C order: the last axis varies fastest)."""
    return x.reshape(x.shape[0], 1, grid, grid, grid)


def resnet3d_out_dim(depth: int, width: int) -> int:
    """Width of the pooled vector of a ``depth``/``width`` net, without building it."""
    kind, _ = RESNET3D_LAYOUTS[depth]
    return 8 * width * (4 if kind == "bottleneck" else 1)


__all__ = [
    "RESNET3D_LAYOUTS",
    "BasicBlock3d",
    "Bottleneck3d",
    "ResNet3d",
    "cubes",
    "norm3d",
    "resnet3d_out_dim",
]
