# CPU twin of deformable_detr_R101_to_R50.py on the built-in shapes data: a Deformable DETR R-50
# teacher, width 256, into the Deformable DETR R-18 of ../detr/deformable_detr_R18_builtin.py
# (width 128, 2 enc / 3 dec layers, 100 queries, two-stage with box refinement); the teacher is
# that config with a ResNet-50 and width 256 (same depth, queries and recipe). All three losses,
# paper weights (lambda1 = 1, lambda2 = 20, lambda3 = 1); LD stages 3 -> 3; FD adapters
# 128 -> 256 on the 4 encoder-output levels; AD decodes the teacher's 100 two-stage queries
# (content mapped 256 -> 128, anchors = its selected proposals).
#
# Teacher checkpoint (model.teacher.weights): default output/deformable_detr_R50_builtin/model_final.pth,
# trained with
#   python train_net.py --config-file configs/detr/deformable_detr_R18_builtin.py \
#     model.backbone.bottom_up.stages.depth=50 model.embed_dim=256 \
#     train.output_dir=./output/deformable_detr_R50_builtin
from detectron2.config import LazyCall as L

from d2kd.meta_arch import DistillDETR, FrozenTeacher

from ..common.detrdistill import detrdistill_losses
from ..detr.deformable_detr_R18_builtin import dataloader, lr_multiplier, optimizer, train
from ..detr.deformable_detr_R18_builtin import model as _student
from ..detr.deformable_detr_R18_builtin import model as _teacher

_teacher.backbone.bottom_up.stages.depth = 50
_teacher.embed_dim = 256

model = L(DistillDETR)(
    student=_student,
    teacher=L(FrozenTeacher)(model=_teacher, weights="output/deformable_detr_R50_builtin/model_final.pth"),
    losses=detrdistill_losses(),
    max_iter="${train.max_iter}",
)

train.output_dir = "./output/detrdistill/deformable_detr_R50_to_R18_builtin"
