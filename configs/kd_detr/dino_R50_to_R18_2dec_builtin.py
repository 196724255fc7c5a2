# KD-DETR with a shallower student decoder: dino_R50_to_R18_builtin.py with a 2-layer student
# decoder (the teacher has 4). Both student layers mimic the teacher's last layer at every
# distillation point, so no layer pairing is needed. (The base pair is already 4 -> 3 layers.)
from .dino_R50_to_R18_builtin import dataloader, lr_multiplier, model, optimizer, train

model.student.decoder.num_layers = 2
train.output_dir = "./output/kd_detr/dino_R50_to_R18_2dec_builtin"
