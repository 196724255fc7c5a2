# Faster R-CNN R-18-FPN on the built-in shapes data (192 px): the small twin of
# faster_rcnn_R18_fpn_1x.py. As there: backbone from pretrained weights (the built-in ones,
# `python -m d2kd.tools.pretrain_backbone --depth 18`, in place of ImageNet), FrozenBN, stem and
# res2 frozen, SGD lr 0.02 with warmup and two drops. CPU-sized: 128-channel FPN, 128 sampled RoIs
# per image, 2x256 FC box head, anchors for 8-180 px objects, batch 4.
# faster_rcnn_R50_fpn_builtin.py / faster_rcnn_R101_fpn_builtin.py.
from d2kd.engine.backbone_pretrain import PIXEL_MEAN, PIXEL_STD, builtin_backbone_path

from ..common.data.builtin import NUM_CLASSES, dataloader
from ..common.models.faster_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.schedule import multistep
from ..common.train import train

model.backbone.bottom_up.stages.depth = 18
model.backbone.bottom_up.stages.stride_in_1x1 = False  # as the built-in pretraining (R-50/101)
model.backbone.out_channels = 128
model.proposal_generator.anchor_generator.sizes = [[10], [20], [40], [80], [160]]
model.proposal_generator.pre_nms_topk = (1000, 500)
model.proposal_generator.post_nms_topk = (500, 300)
model.roi_heads.num_classes = NUM_CLASSES
model.roi_heads.batch_size_per_image = 128
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape.channels = 256
# the pretraining's normalisation (BGR, unit variance)
model.pixel_mean = list(PIXEL_MEAN)
model.pixel_std = list(PIXEL_STD)

optimizer.lr = 0.02
train.init_checkpoint = builtin_backbone_path(18)
train.clip_grad.enabled = True
train.clip_grad.max_norm = 5.0
train.max_iter = 1200
lr_multiplier = multistep(train.max_iter, steps=(0.75, 0.9), warmup_iters=100)
train.eval_period = 400
train.checkpointer.period = 400
train.checkpointer.max_to_keep = 3
train.output_dir = "./output/faster_rcnn_R18_fpn_builtin"
