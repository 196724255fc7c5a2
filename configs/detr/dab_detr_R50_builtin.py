# DAB-DETR R-50 on the built-in shapes data (192 px, 12 classes), from scratch, CPU-sized: the
# teacher of ../kd_detr/dab_detr_R50_to_R18_builtin.py. Compared with dab_detr_R50_50ep.py:
# BatchNorm ResNet from scratch (ScratchResNet), 3 encoder / 4 decoder layers, FFN 1024, 100
# queries, batch 4, AdamW lr 1e-3, short schedule; single-scale C5 (6x6 tokens at 192 px).
from d2kd.layers import ScratchResNet

from ..common.data.builtin import NUM_CLASSES, dataloader
from ..common.models.dab_detr import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import multistep
from ..common.train import train

model.backbone.bottom_up.stages.norm = "BN"
model.backbone.bottom_up.freeze_at = 0
model.backbone.bottom_up._target_ = ScratchResNet  # residual blocks start as the identity
model.num_classes = NUM_CLASSES
model.num_queries = 100
model.select_topk = 100
model.encoder.num_layers = 3
model.decoder.num_layers = 4
model.encoder.ffn_dim = 1024
model.decoder.ffn_dim = 1024
model.encoder.activation = "prelu"
model.decoder.activation = "prelu"
# the built-in data loader yields BGR images (detectron2's default)
model.pixel_mean = [103.530, 116.280, 123.675]
model.pixel_std = [57.375, 57.120, 58.395]

optimizer.lr = 1e-3
optimizer.weight_decay = 1e-4

train.max_iter = 3000
lr_multiplier = multistep(train.max_iter, steps=(0.75, 0.9), warmup_iters=100)
train.clip_grad.enabled = True
train.clip_grad.max_norm = 0.1
train.eval_period = 1000
train.checkpointer.period = 500
train.checkpointer.max_to_keep = 3
train.output_dir = "./output/dab_detr_R50_builtin"
