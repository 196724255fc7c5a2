# dino_R50_to_R18_builtin.py with DETRDistill's Hungarian-matching logits distillation only (Tab. 5 "LD").
from .dino_R50_to_R18_builtin import dataloader, lr_multiplier, model, optimizer, train

model.losses = {"ld": model.losses["ld"]}
train.output_dir = "./output/detrdistill/dino_R50_to_R18_ld_builtin"
