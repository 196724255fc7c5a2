"""ScratchResNet: detectron2's ResNet whose residual blocks start as the identity."""
import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

from d2kd.layers import ScratchResNet


def _resnet(cls, depth, norm="BN", **kwargs):
    extra = {"stride_in_1x1": True} if depth >= 50 else {}
    stages = ResNet.make_default_stages(depth=depth, norm=norm, **extra)
    return cls(BasicStem(3, 64, norm=norm), stages, out_features=["res2", "res5"], **kwargs)


@pytest.mark.parametrize("depth", [18, 50])
def test_every_residual_block_starts_as_the_identity(depth):
    torch.manual_seed(0)
    net = _resnet(ScratchResNet, depth).eval()
    blocks = [m for m in net.modules() if isinstance(m, (BasicBlock, BottleneckBlock))]
    assert len(blocks) == {18: 8, 50: 16}[depth]
    for block in blocks:
        last = block.conv3 if isinstance(block, BottleneckBlock) else block.conv2
        assert torch.count_nonzero(last.norm.weight) == 0
    # a block without a projection shortcut maps its (non-negative, post-ReLU) input to itself
    block = next(b for b in blocks if b.shortcut is None)
    x = torch.rand(2, block.in_channels, 8, 8)
    torch.testing.assert_close(block(x), x)
    # and it still trains: the zeroed scales get a gradient
    net.train()
    net(torch.rand(2, 3, 64, 64))["res5"].sum().backward()
    lasts = [b.conv3 if isinstance(b, BottleneckBlock) else b.conv2 for b in blocks]
    assert all(last.norm.weight.grad.abs().sum() > 0 for last in lasts)


def test_same_parameters_as_detectron2_resnet_and_opt_out():
    torch.manual_seed(0)
    ours = _resnet(ScratchResNet, 18, zero_init_residual=False)
    torch.manual_seed(0)
    theirs = _resnet(ResNet, 18)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(v, theirs.state_dict()[k])


def test_frozen_norms_are_left_alone():
    net = _resnet(ScratchResNet, 18, norm="FrozenBN")
    block = net.res2[0]
    assert isinstance(block.conv2.norm, FrozenBatchNorm2d)
    assert torch.count_nonzero(block.conv2.norm.weight) > 0
