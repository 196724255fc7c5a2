# UniKD stage 1 on the built-in shapes data, the CPU twin of frcnn_R101_absorb.py: AKEs on the
# frozen Faster R-CNN R-50 built-in teacher (configs/baselines/faster_rcnn_R50_fpn_builtin.py;
# P2-P6, strides 4-64, width 128). Sizes and schedule as dino_R50_absorb_builtin.py.
from detectron2.config import LazyCall as L

from d2kd.distill.unikd import AKEPair
from d2kd.meta_arch import FrozenTeacher, UniKDAbsorb

from ..baselines.faster_rcnn_R50_fpn_builtin import dataloader, model as teacher_model, train
from .dino_R50_absorb_builtin import lr_multiplier, optimizer

model = L(UniKDAbsorb)(
    teacher=L(FrozenTeacher)(model=teacher_model, weights=train.output_dir + "/model_final.pth"),
    ake=L(AKEPair)(
        embed_dim=teacher_model.backbone.out_channels,
        strides=[4, 8, 16, 32, 64],
        num_classes=teacher_model.roi_heads.num_classes,
        num_queries=100,
        num_heads=8,
        num_points=4,
        ffn_dim=512,
        dropout=0.0,
    ),
)

train.init_checkpoint = ""
train.max_iter = 1500
train.clip_grad.enabled = True
train.clip_grad.max_norm = 0.1
train.eval_period = 0
train.checkpointer.period = 500
train.checkpointer.max_to_keep = 3
train.output_dir = "./output/unikd_frcnn_R50_absorb_builtin"
