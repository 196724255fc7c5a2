# RetinaNet R-18-FPN on the built-in shapes data (192 px), from scratch, sized for a CPU:
# 128-channel FPN and head, anchors for 8-180 px objects (3 scales per octave from 8 px).
from detectron2.layers import ShapeSpec

from d2kd.layers import ScratchResNet

from ..common.data.builtin import NUM_CLASSES, dataloader
from ..common.models.retinanet import model
from ..common.optim import SGD as optimizer
from ..common.schedule import multistep
from ..common.train import train

model.backbone.bottom_up.stages.depth = 18
model.backbone.bottom_up.stages.norm = "BN"
model.backbone.bottom_up.stem.norm = "BN"
model.backbone.bottom_up.freeze_at = 0
model.backbone.bottom_up._target_ = ScratchResNet  # residual blocks start as the identity
model.backbone.out_channels = 128
model.head.input_shape = [ShapeSpec(channels=128)] * 5
model.head.conv_dims = [128, 128, 128, 128]
model.anchor_generator.sizes = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)]
                                for x in [8, 16, 32, 64, 128]]
model.num_classes = NUM_CLASSES
model.pixel_std = [57.375, 57.120, 58.395]

optimizer.lr = 0.01
# From scratch, the first iterations (even with warmup) can blow up without clipping.
train.clip_grad.enabled = True
train.clip_grad.max_norm = 5.0
train.max_iter = 3000
lr_multiplier = multistep(train.max_iter, steps=(0.75, 0.9), warmup_iters=200)
train.eval_period = 1000
train.checkpointer.period = 500
train.checkpointer.max_to_keep = 3
train.output_dir = "./output/retinanet_R18_fpn_builtin"
