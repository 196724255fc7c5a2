# UniKD stage 2 (injecting, Eq. 7-8): RetinaNet R-50-FPN teacher -> Deformable DETR R-18
# student (paper Tab. 2: 37.2 -> 39.2; 39.9 from Faster R-CNN), COCO. The student follows
# Deformable DETR's recommended recipe, as the paper does for it (Sec. 4.1): the setting of
# configs/detr/deformable_detr_R50_50ep.py (AdamW 2e-4, 50 epochs, batch 32) with a ResNet-18.
# The AKEs (from retinanet_R50_absorb.py) read the student's encoder output; the teacher's
# P7 (stride 128) is max-pooled from the student's stride-64 level.
# Input format: the student reads RGB like deformable_detr_R50_50ep.py (torchvision R-18 start,
# torchvision statistics); the teacher (MSRA R-50, trained on BGR) flips the channels of what it
# is given (FrozenTeacher.flip_channels).
from d2kd.engine.model_zoo import pretrained_weights

from ..common.unikd import unikd_stage2
from ..detr.deformable_detr_R50_50ep import dataloader, lr_multiplier, model as student, optimizer, train
from .retinanet_R50_absorb import model as absorb, train as absorb_train

student.backbone.bottom_up.stages.depth = 18
absorb.teacher.flip_channels = True
train.init_checkpoint = pretrained_weights("ImageNetPretrained/torchvision/R-18.pkl")

model = unikd_stage2(student, absorb, absorb_train, student_channels=student.embed_dim, adaptor_ffn_dim=1024)

train.output_dir = "./output/unikd_retinanet_R50_to_deformable_detr_R18"
