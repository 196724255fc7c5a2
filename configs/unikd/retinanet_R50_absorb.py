# UniKD stage 1 (absorbing, Eq. 6): AKEs on the frozen RetinaNet R-50-FPN teacher's FPN
# (P3-P7, strides 8-128, width 256), COCO; settings as dino_R50_absorb.py (N = 200, Deformable
# DETR's recipe, 15 epochs at batch 16). The teacher's own data pipeline (BGR, MSRA weights).
from detectron2.config import LazyCall as L

from d2kd.distill.unikd import AKEPair
from d2kd.meta_arch import FrozenTeacher, UniKDAbsorb

from ..baselines.retinanet_R50_fpn_1x import dataloader, model as teacher_model, train
from .dino_R50_absorb import COCO_EPOCH, lr_multiplier, optimizer

model = L(UniKDAbsorb)(
    teacher=L(FrozenTeacher)(model=teacher_model, weights=train.output_dir + "/model_final.pth"),
    ake=L(AKEPair)(
        embed_dim=teacher_model.backbone.out_channels,
        strides=[8, 16, 32, 64, 128],  # P3-P7
        num_classes=teacher_model.num_classes,
        num_queries=200,
        num_heads=8,
        num_points=4,
        ffn_dim=1024,
        dropout=0.1,
    ),
)

dataloader.train.total_batch_size = 16
train.init_checkpoint = ""
train.max_iter = 15 * COCO_EPOCH
train.clip_grad.enabled = True
train.clip_grad.max_norm = 0.1
train.eval_period = 5 * COCO_EPOCH
train.checkpointer.period = 5 * COCO_EPOCH
train.output_dir = "./output/unikd_retinanet_R50_absorb"
