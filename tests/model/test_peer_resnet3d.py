"""Our 3D ResNet-10 backbone (deref.model.resnet3d) against MedicalNet's resnet10 (Chen, Ma &
Zheng, "Med3D: transfer learning for 3D medical image analysis", 2019), by parameter count.

Counts obtained by running Tencent/MedicalNet ``models/resnet.py`` on CPU:
``resnet10(sample_input_D=32, sample_input_H=32, sample_input_W=32, num_seg_classes=2)``
(``shortcut_type='B'``, the default of ``ResNet`` and of ``setting.py``'s
``--resnet_shortcut``, and the shortcut of their pretrained ``resnet_10.pth``) has 14,514,464
parameters, of which 158,944 are ``conv_seg``, the segmentation head (ConvTranspose3d(512, 32, 2)
with bias 131,104 + BatchNorm3d(32) 64 + Conv3d(32, 32, 3) 27,648 + BatchNorm3d(32) 64 +
Conv3d(32, num_seg_classes=2, 1) 64), which we do not have: we pool globally instead. The
backbone (``conv1, bn1, layer1`` ... ``layer4``) is 14,514,464 - 158,944 = 14,355,520 (the
sample_input sizes build nothing; ``num_seg_classes`` only changes the last 1^3 convolution).

Ours uses the type-B shortcut too (``_shortcut``: a bias-free 1^3 convolution + norm wherever
the stride or the width changes). Other differences have no parameters: GroupNorm (default)
vs BatchNorm3d (both one weight and one bias per channel; BatchNorm's running statistics are
buffers), no max pooling after the stem, and stride 2 in stages 3-4 where MedicalNet keeps
stride 1 with dilation 2 and 4 (same kernels).
"""

from __future__ import annotations

import pytest

from deref.model.resnet3d import ResNet3d
from tests.model.peer_checks import n_params

#: MedicalNet resnet10 (shortcut B, 1 input channel, base width 64), per module, from running it.
MEDICALNET_RESNET10 = {
    "conv1": 21_952,
    "bn1": 128,
    "layer1": 221_440,
    "layer2": 672_512,
    "layer3": 2_688_512,
    "layer4": 10_750_976,
    "conv_seg": 158_944,
}
MEDICALNET_RESNET10_TOTAL = 14_514_464
#: The same with ``shortcut_type='A'`` (zero-padded identity shortcuts, no parameters): stages 2-4.
MEDICALNET_RESNET10_A = {"layer2": 664_064, "layer3": 2_655_232, "layer4": 10_618_880}


def test_medicalnet_numbers_add_up():
    assert sum(MEDICALNET_RESNET10.values()) == MEDICALNET_RESNET10_TOTAL


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_resnet10_backbone_has_medicalnets_parameter_count(norm):
    ours = ResNet3d(10, 64, in_channels=1, norm=norm)
    backbone = MEDICALNET_RESNET10_TOTAL - MEDICALNET_RESNET10["conv_seg"]
    assert backbone == 14_355_520
    assert n_params(ours) == backbone
    assert n_params(ours.conv1) == MEDICALNET_RESNET10["conv1"]
    assert n_params(ours.norm1) == MEDICALNET_RESNET10["bn1"]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        assert n_params(getattr(ours, stage)) == MEDICALNET_RESNET10[stage], stage


def test_the_difference_to_shortcut_a_is_exactly_our_projection_shortcuts():
    ours = ResNet3d(10, 64, in_channels=1)
    for stage in ("layer2", "layer3", "layer4"):
        block = getattr(ours, stage)[0]
        assert block.shortcut is not None
        assert n_params(getattr(ours, stage)) - MEDICALNET_RESNET10_A[stage] == n_params(block.shortcut)
    assert ours.layer1[0].shortcut is None  # 64 -> 64, stride 1: identity in both codes
    # 1^3 projections 64->128, 128->256, 256->512, each with a norm (weight + bias)
    assert sum(n_params(getattr(ours, s)[0].shortcut) for s in ("layer2", "layer3", "layer4")) == 173_824
