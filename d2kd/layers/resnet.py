"""detectron2's ResNet, set up for training from scratch."""
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, ResNet
from torch import nn


class ScratchResNet(ResNet):
    """:class:`detectron2.modeling.ResNet` whose residual blocks start as the identity.

    The last normalisation layer of every residual branch starts with a zero scale ("zero-gamma",
    Goyal et al. 2017, "Accurate, Large Minibatch SGD", Sec. 5.1), so at initialisation each block
    passes its input through unchanged and a deep ResNet trains from scratch as readily as a
    shallow one: without it, Faster R-CNN R-50-FPN from scratch on the built-in data sits at the
    background solution for ~600 iterations while R-18 learns from ~250.

    Same arguments as ``ResNet`` (so configs keep their ``bottom_up.*`` keys: set only
    ``_target_``), plus ``zero_init_residual``. Blocks without a norm layer are left as they are.
    """

    def __init__(self, *args, zero_init_residual: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if zero_init_residual:
            for block in self.modules():
                last = None
                if isinstance(block, BottleneckBlock):
                    last = block.conv3
                elif isinstance(block, BasicBlock):
                    last = block.conv2
                norm = getattr(last, "norm", None)
                if isinstance(norm, nn.modules.batchnorm._NormBase) or isinstance(norm, nn.GroupNorm):
                    nn.init.zeros_(norm.weight)
