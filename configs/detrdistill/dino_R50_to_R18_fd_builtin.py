# dino_R50_to_R18_builtin.py with DETRDistill's target-aware feature distillation only (Tab. 5 "FD").
from .dino_R50_to_R18_builtin import dataloader, lr_multiplier, model, optimizer, train

model.losses = {"fd": model.losses["fd"]}
train.output_dir = "./output/detrdistill/dino_R50_to_R18_fd_builtin"
