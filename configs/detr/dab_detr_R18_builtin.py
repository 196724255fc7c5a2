# DAB-DETR R-18 on the built-in shapes data: the student of ../kd_detr/dab_detr_R50_to_R18_builtin.py.
# dab_detr_R50_builtin.py made smaller: ResNet-18, width 128, 2 encoder / 3 decoder layers, FFN 512.
from .dab_detr_R50_builtin import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 18
model.embed_dim = 128
model.encoder.num_layers = 2
model.decoder.num_layers = 3
model.encoder.ffn_dim = 512
model.decoder.ffn_dim = 512
train.output_dir = "./output/dab_detr_R18_builtin"
