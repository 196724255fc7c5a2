# Faster R-CNN R-18-FPN on the built-in shapes data (192 px), from scratch, sized for a CPU:
# 128-channel FPN, 128 sampled RoIs per image, 2x256 FC box head, anchors for 8-180 px objects.
# faster_rcnn_R50_fpn_builtin.py / faster_rcnn_R101_fpn_builtin.py.
from d2kd.layers import ScratchResNet

from ..common.data.builtin import NUM_CLASSES, dataloader
from ..common.models.faster_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.schedule import multistep
from ..common.train import train

# From scratch: trainable BatchNorm everywhere in the ResNet, nothing frozen.
model.backbone.bottom_up.stages.depth = 18
model.backbone.bottom_up.stages.norm = "BN"
model.backbone.bottom_up.stem.norm = "BN"
model.backbone.bottom_up.freeze_at = 0
model.backbone.bottom_up._target_ = ScratchResNet  # residual blocks start as the identity
model.backbone.out_channels = 128
model.proposal_generator.anchor_generator.sizes = [[10], [20], [40], [80], [160]]
model.proposal_generator.pre_nms_topk = (1000, 500)
model.proposal_generator.post_nms_topk = (500, 300)
model.roi_heads.num_classes = NUM_CLASSES
model.roi_heads.batch_size_per_image = 128
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape.channels = 256
# Not ImageNet weights: normalise the pixels to unit variance.
model.pixel_std = [57.375, 57.120, 58.395]

optimizer.lr = 0.02
# From scratch, the first iterations (even with warmup) can blow up without clipping.
train.clip_grad.enabled = True
train.clip_grad.max_norm = 5.0
train.max_iter = 3000
lr_multiplier = multistep(train.max_iter, steps=(0.75, 0.9), warmup_iters=200)
train.eval_period = 1000
train.checkpointer.period = 500
train.checkpointer.max_to_keep = 3
train.output_dir = "./output/faster_rcnn_R18_fpn_builtin"
