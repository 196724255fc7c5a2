# DINO R-18 on the built-in shapes data: the *student* of the CPU distillation demos.
# dino_R50_builtin.py (the teacher) made smaller in every dimension distillation cares about:
# ResNet-18 (built-in pretrained, `python -m d2kd.tools.pretrain_backbone --depth 18`), width 128,
# 2 encoder / 3 decoder layers, FFN 512, 100 queries, 30 denoising queries. Same optimiser.
from d2kd.engine.backbone_pretrain import builtin_backbone_path

from .dino_R50_builtin import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 18
model.embed_dim = 128
model.num_queries = 100
model.encoder.num_layers = 2
model.decoder.num_layers = 3
model.encoder.ffn_dim = 512
model.decoder.ffn_dim = 512
model.denoising.num_queries = 30
train.init_checkpoint = builtin_backbone_path(18)
train.output_dir = "./output/dino_R18_builtin"
