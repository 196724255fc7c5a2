# DETRDistill (Chang et al. 2023, Tab. 3): Deformable DETR R-101 -> Deformable DETR R-50, COCO,
# 50 epochs (paper: student 44.1 -> 46.6 AP; teacher 45.5). Both models are the plain one-stage
# Deformable DETR of ../detr/deformable_detr_R50_50ep.py (300 queries, 6 + 6 layers); the
# teacher is the same config with a ResNet-101. Student recipe, data and schedule unchanged
# (batch 32, AdamW 2e-4, lr / 10 at epoch 40, clipping 0.1, ImageNet R-50 init), all three
# losses with the paper's weights lambda1 = 1, lambda2 = 20, lambda3 = 1:
# - LD: 6 -> 6 stages, teacher stage k supervises student stage k;
# - FD: the 4 encoder-output levels (strides 8..64), adapters 256 -> 256;
# - AD: the teacher's 300 learned queries (content + anchors; same width: no adapter).
#
# Teacher checkpoint (model.teacher.weights): default output/deformable_detr_R101_50ep/model_final.pth,
# e.g. trained with
#   python train_net.py --config-file configs/detr/deformable_detr_R50_50ep.py --num-gpus 8 \
#     model.backbone.bottom_up.stages.depth=101 train.output_dir=./output/deformable_detr_R101_50ep \
#     train.init_checkpoint=$D2KD_WEIGHTS/ImageNetPretrained/torchvision/R-101.pkl
# One component alone: keep one entry of model.losses (see dino_R50_to_R18_{ld,fd,ad}_builtin.py);
# LD variants: model.losses.ld.terms=[neg_box] (Tab. 6), model.losses.ld.progressive=False (Tab. 7).
from detectron2.config import LazyCall as L

from d2kd.meta_arch import DistillDETR, FrozenTeacher

from ..common.detrdistill import detrdistill_losses
from ..detr.deformable_detr_R50_50ep import dataloader, lr_multiplier, optimizer, train
from ..detr.deformable_detr_R50_50ep import model as _student
from ..detr.deformable_detr_R50_50ep import model as _teacher

_teacher.backbone.bottom_up.stages.depth = 101

model = L(DistillDETR)(
    student=_student,
    teacher=L(FrozenTeacher)(model=_teacher, weights="output/deformable_detr_R101_50ep/model_final.pth"),
    losses=detrdistill_losses(),
    max_iter="${train.max_iter}",
)

# train.init_checkpoint (ImageNet R-50) reaches student.backbone.* by detectron2's suffix matching;
# the teacher is not part of the distiller's state dict and loads its own checkpoint.
train.output_dir = "./output/detrdistill/deformable_detr_R101_to_R50"
