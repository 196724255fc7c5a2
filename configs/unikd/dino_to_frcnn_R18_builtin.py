# UniKD stage 2 on the built-in shapes data, the CPU twin of dino_to_frcnn_R50.py: DINO R-50
# built-in teacher -> Faster R-CNN R-18-FPN built-in student (its baseline's schedule and
# optimiser: configs/baselines/faster_rcnn_R18_fpn_builtin.py, so the two are comparable).
# Adaptor FFN 512 (CPU-sized); lambda_1 = lambda_2 = 10, two self-attention layers.
#   python train_net.py --config-file configs/detr/dino_R50_builtin.py          # teacher
#   python train_net.py --config-file configs/unikd/dino_R50_absorb_builtin.py  # stage 1
#   python train_net.py --config-file configs/unikd/dino_to_frcnn_R18_builtin.py
from ..common.unikd import unikd_stage2
from ..baselines.faster_rcnn_R18_fpn_builtin import dataloader, lr_multiplier, model as student, optimizer, train
from .dino_R50_absorb_builtin import model as absorb, train as absorb_train

model = unikd_stage2(
    student, absorb, absorb_train, student_channels=student.backbone.out_channels, adaptor_ffn_dim=512
)

train.output_dir = "./output/unikd_dino_to_frcnn_R18_builtin"
