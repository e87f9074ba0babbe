"""An independent PyTorch model of the official PSConv layers and PS-ResNets.

Written from the description of d-li14/PSConv (mmdet/models/utils/psconv.py),
not from its code: the official layer sums three convolutions,

- `gwconv`: grouped (groups * parts groups) at rate d,
- `gwconv_shift`: grouped likewise at rate 2d, applied to the input with the
  two channel halves of every group swapped,
- `conv`: dense within each of `groups` groups at rate 1, whose weights are
  meant to be zero where the other two act (the mask).

With groups > 1 this is the official `PSGConv2d`, whose mask indexes filter
blocks as `i + j * groups` instead of `i + j * parts` (the "slip"), so that
only some groups are masked. Around it: torchvision's ResNet v1.5 layout
(stride on the 3x3 conv, 1x1 conv + BN shortcut, fc), with the official
state-dict keys.
"""

import torch
from torch import nn


class OfficialPSConv(nn.Module):
    """The official PSConv2d (groups=1) or PSGConv2d (groups > 1), 3x3.

    Args:
        in_channels, out_channels: channels.
        stride: the stride of all three convs.
        dilation: the rate d of `gwconv`; `gwconv_shift` has 2d.
        groups: the cardinality (PSGConv2d).
        parts: the number of channel blocks per group.
        mask_slip: build the mask with the official PSGConv2d's indexing.
    """

    def __init__(self, in_channels, out_channels, stride=1, dilation=2, groups=1,
                 parts=4, mask_slip=False):
        super().__init__()
        blocks = groups * parts
        self.gwconv = nn.Conv2d(in_channels, out_channels, 3, stride, dilation,
                                dilation, groups=blocks, bias=False)
        self.gwconv_shift = nn.Conv2d(in_channels, out_channels, 3, stride,
                                      2 * dilation, 2 * dilation, groups=blocks,
                                      bias=False)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1,
                              groups=groups, bias=False)
        self.groups = groups
        self.register_buffer(
            "mask", self.masked_positions(in_channels, out_channels, groups, parts,
                                          mask_slip),
            persistent=False,
        )

    @staticmethod
    def masked_positions(in_channels, out_channels, groups, parts, mask_slip=False):
        """Bool (out, in / groups): where `conv` is masked.

        Filter block i of a group pairs with input block i (gwconv) and input
        block (i + parts/2) % parts (gwconv_shift), blocks counted per group.
        """
        out_block = out_channels // (groups * parts)
        in_block = in_channels // (groups * parts)
        mask = torch.zeros(out_channels, in_channels // groups, dtype=torch.bool)
        group_step = groups if mask_slip else parts
        for group in range(groups):
            for part in range(parts):
                for in_part in (part, (part + parts // 2) % parts):
                    row = part + group * group_step
                    mask[row * out_block : (row + 1) * out_block,
                         in_part * in_block : (in_part + 1) * in_block] = True
        return mask

    def zero_masked_weights_(self):
        with torch.no_grad():
            self.conv.weight[self.mask] = 0

    def forward(self, x):
        n, c, h, w = x.shape
        halves = x.reshape(n, self.groups, 2, c // (2 * self.groups), h, w)
        swapped = halves.flip(2).reshape(n, c, h, w)
        return self.gwconv(x) + self.gwconv_shift(swapped) + self.conv(x)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5); `conv2` official PSConv or standard."""

    def __init__(self, in_planes, planes, stride, groups, width_per_group,
                 psconv, mask_slip):
        super().__init__()
        width = planes * width_per_group // 64 * groups
        self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        if psconv:
            self.conv2 = OfficialPSConv(width, width, stride, groups=groups,
                                        mask_slip=mask_slip)
        else:
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups,
                                   bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_planes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes * 4, 1, stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """torchvision's ResNet with bottlenecks: PS-ResNet / PS-ResNeXt.

    Args:
        blocks: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        groups, width_per_group: ResNeXt's cardinality and width.
        psconv: official PSConv 3x3 convs, else standard ones.
        mask_slip: the official PSGConv2d mask (see `OfficialPSConv`).
        num_classes: fc outputs.
    """

    def __init__(self, blocks, groups=1, width_per_group=64, psconv=True,
                 mask_slip=False, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_planes = 64
        for index, (count, planes) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stage = []
            for number in range(count):
                stride = 2 if index > 0 and number == 0 else 1
                stage.append(Bottleneck(in_planes, planes, stride, groups,
                                        width_per_group, psconv, mask_slip))
                in_planes = planes * 4
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomize_(module, seed, zero_masked=True):
    """Random weights and BatchNorm statistics, in place; returns `module`.

    Convs get He-normal weights (fan in) so activations keep their scale
    through deep networks. With `zero_masked`, masked weights of official
    layers are zeroed (as the official init means to); else they keep their
    random values (as mmdet's re-initialization leaves them).
    """
    generator = torch.Generator().manual_seed(seed)

    def normal(tensor, std):
        with torch.no_grad():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)

    def uniform(tensor, low, high):
        with torch.no_grad():
            tensor.copy_(low + (high - low) * torch.rand(tensor.shape, generator=generator))

    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            normal(layer.weight, (2.0 / layer.weight[0].numel()) ** 0.5)
            if layer.bias is not None:
                normal(layer.bias, 0.1)
        elif isinstance(layer, nn.BatchNorm2d):
            uniform(layer.weight, 0.5, 1.5)
            normal(layer.bias, 0.1)
            normal(layer.running_mean, 0.1)
            uniform(layer.running_var, 0.5, 1.5)
    if zero_masked:
        for layer in module.modules():
            if isinstance(layer, OfficialPSConv):
                layer.zero_masked_weights_()
    return module
