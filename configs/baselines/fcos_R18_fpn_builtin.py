# FCOS R-18-FPN on the built-in shapes data (192 px), built-in pretrained R-18
# (`python -m d2kd.tools.pretrain_backbone --depth 18`, FrozenBN, stem and res2 frozen), sized for a CPU:
# 128-channel FPN and GN head.
from detectron2.layers import ShapeSpec

from d2kd.engine.backbone_pretrain import PIXEL_MEAN, PIXEL_STD, builtin_backbone_path

from ..common.data.builtin import NUM_CLASSES, dataloader
from ..common.models.fcos import model
from ..common.optim import SGD as optimizer
from ..common.schedule import multistep
from ..common.train import train

model.backbone.bottom_up.stages.depth = 18
model.backbone.bottom_up.stages.stride_in_1x1 = False  # as the built-in pretraining
model.backbone.out_channels = 128
model.head.input_shape = [ShapeSpec(channels=128)] * 5
model.head.conv_dims = [128, 128, 128, 128]
model.num_classes = NUM_CLASSES
model.pixel_mean = list(PIXEL_MEAN)  # the pretraining's normalisation
model.pixel_std = list(PIXEL_STD)

optimizer.lr = 0.01
train.init_checkpoint = builtin_backbone_path(18)
train.clip_grad.enabled = True
train.clip_grad.max_norm = 5.0
train.max_iter = 1200
lr_multiplier = multistep(train.max_iter, steps=(0.75, 0.9), warmup_iters=100)
train.eval_period = 400
train.checkpointer.period = 400
train.checkpointer.max_to_keep = 3
train.output_dir = "./output/fcos_R18_fpn_builtin"
