# FCOS (anchor-free) on the RetinaNet ResNet-FPN backbone (detectron2 model-zoo settings).
# ResNet depth is one line: model.backbone.bottom_up.stages.depth = 18 | 34 | 50 | 101 | 152
from detectron2.modeling.meta_arch.fcos import FCOS, FCOSHead

from .retinanet import model

model._target_ = FCOS

del model.anchor_generator
del model.box2box_transform
del model.anchor_matcher
del model.input_format

# P6/P7 from P5 instead of C5 (Sec 2.2 of https://arxiv.org/abs/2006.09214).
model.backbone.top_block.in_feature = "p5"
model.backbone.top_block.in_channels = "${..out_channels}"

# Score threshold on sqrt(cls_score * centerness).
model.test_score_thresh = 0.2
model.test_nms_thresh = 0.6

model.head._target_ = FCOSHead
del model.head.num_anchors
model.head.norm = "GN"
