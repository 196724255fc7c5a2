# dino_R50_to_R18_builtin.py with DETRDistill's query-prior assignment distillation only (Tab. 5 "AD").
from .dino_R50_to_R18_builtin import dataloader, lr_multiplier, model, optimizer, train

model.losses = {"ad": model.losses["ad"]}
train.output_dir = "./output/detrdistill/dino_R50_to_R18_ad_builtin"
