# UniKD stage 2 (injecting, Eq. 7-8): DINO-4scale R-50 teacher -> Faster R-CNN R-50-FPN student,
# COCO 1x (SGD 0.02, momentum 0.9, weight decay 1e-4, lr / 10 at epochs 8 and 11, batch 16).
# The frozen AKEs come from the stage-1 run (dino_R50_absorb.py), the teacher from its own run:
#   python train_net.py --config-file configs/unikd/dino_R50_absorb.py --num-gpus 8
#   python train_net.py --config-file configs/unikd/dino_to_frcnn_R50.py --num-gpus 8 \
#       [model.losses.unikd.ake.weights=<stage-1 model_final.pth>] [model.teacher.weights=<...>]
# lambda_1 = lambda_2 = 10, two deformable self-attention layers in the adaptor (Sec. 4.1).
# Input format: the student is detectron2's standard Faster R-CNN R-50-FPN 1x (MSRA R-50, BGR,
# ../baselines/faster_rcnn_R50_fpn_1x.py unchanged: its baseline is that config); the DINO teacher
# (trained on RGB) flips the channels of what it is given (FrozenTeacher.flip_channels).
from ..common.unikd import unikd_stage2
from ..baselines.faster_rcnn_R50_fpn_1x import dataloader, lr_multiplier, model as student, optimizer, train
from .dino_R50_absorb import model as absorb, train as absorb_train

absorb.teacher.flip_channels = True

model = unikd_stage2(
    student, absorb, absorb_train, student_channels=student.backbone.out_channels, adaptor_ffn_dim=1024
)

train.output_dir = "./output/unikd_dino_to_frcnn_R50"
