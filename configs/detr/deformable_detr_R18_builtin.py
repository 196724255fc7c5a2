# Deformable DETR R-18 (iterative box refinement + two-stage) on the built-in shapes data,
# from scratch, CPU-sized: width 128, 2 encoder / 3 decoder layers, FFN 512, 100 queries,
# no dropout (short schedules), batch 4. Optimisation as dino_R18_builtin.py.
from d2kd.layers import ScratchResNet

from ..common.data.builtin import NUM_CLASSES, dataloader
from ..common.models.deformable_detr import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import multistep
from ..common.train import train

model.backbone.bottom_up.stages.depth = 18
model.backbone.bottom_up.stages.norm = "BN"
model.backbone.bottom_up.freeze_at = 0
model.backbone.bottom_up._target_ = ScratchResNet  # residual blocks start as the identity
model.num_classes = NUM_CLASSES
model.two_stage = True
model.decoder.box_refine = True
model.decoder.share_heads = False
model.embed_dim = 128
model.num_queries = 100
model.encoder.num_layers = 2
model.decoder.num_layers = 3
model.encoder.ffn_dim = 512
model.decoder.ffn_dim = 512
model.encoder.dropout = 0.0
model.decoder.dropout = 0.0
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
train.output_dir = "./output/deformable_detr_R18_builtin"
