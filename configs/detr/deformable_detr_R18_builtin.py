# Deformable DETR R-18 (iterative box refinement + two-stage) on the built-in shapes data,
# built-in pretrained R-18 (FrozenBN, stem frozen, backbone lr 0.1x), CPU-sized: width 128,
# 2 encoder / 3 decoder layers, FFN 512, 100 queries, no dropout (short schedules), batch 4.
# Optimisation as dino_R18_builtin.py.
from detectron2.config import LazyCall as L

from d2kd.engine.backbone_pretrain import PIXEL_MEAN, PIXEL_STD, builtin_backbone_path
from d2kd.engine.model_zoo import LRMultiplierByName

from ..common.data.builtin import NUM_CLASSES, dataloader
from ..common.models.deformable_detr import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import multistep
from ..common.train import train

model.backbone.bottom_up.stages.depth = 18
model.backbone.bottom_up.stages.norm = "FrozenBN"
model.backbone.bottom_up.freeze_at = 1
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
model.pixel_mean = list(PIXEL_MEAN)
model.pixel_std = list(PIXEL_STD)

optimizer.lr = 2e-4
optimizer.params.lr_factor_func = L(LRMultiplierByName)(multipliers={"backbone.bottom_up": 0.1})
optimizer.weight_decay = 1e-4

train.init_checkpoint = builtin_backbone_path(18)
train.max_iter = 2000
lr_multiplier = multistep(train.max_iter, steps=(0.85,), warmup_iters=50)
train.clip_grad.enabled = True
train.clip_grad.max_norm = 0.1
train.eval_period = 500
train.checkpointer.period = 500
train.checkpointer.max_to_keep = 3
train.output_dir = "./output/deformable_detr_R18_builtin"
