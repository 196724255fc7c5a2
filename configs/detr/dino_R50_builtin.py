# DINO R-50 4-scale on the built-in shapes data (192 px, 12 classes): the *teacher* of the CPU
# distillation demos, and the small twin of dino_R50_4scale_12ep.py. As there: backbone from
# pretrained weights (here the built-in ones, `python -m d2kd.tools.pretrain_backbone --depth 50`,
# in place of ImageNet), FrozenBN, stem frozen, AdamW with the backbone at 0.1x, weight decay
# 1e-4, gradient clipping 0.1, class/L1/GIoU 1/5/2, one lr drop late in training.
# CPU-sized: 3 encoder / 4 decoder layers, FFN 1024, 200 queries (100 kept by the mixed query
# selection), 50 denoising queries, batch 4, lr 5e-4 (batch 4 with a short schedule; chosen by
# the learning-curve probes in the README), width 256 and 4 levels as the paper.
from detectron2.config import LazyCall as L

from d2kd.engine.backbone_pretrain import PIXEL_MEAN, PIXEL_STD, builtin_backbone_path
from d2kd.engine.model_zoo import LRMultiplierByName

from ..common.data.builtin import NUM_CLASSES, dataloader
from ..common.models.dino import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import multistep
from ..common.train import train

model.backbone.bottom_up.stages.norm = "FrozenBN"
model.backbone.bottom_up.freeze_at = 1
model.num_classes = NUM_CLASSES
model.num_queries = 200
model.select_topk = 100
model.encoder.num_layers = 3
model.decoder.num_layers = 4
model.encoder.ffn_dim = 1024
model.decoder.ffn_dim = 1024
model.denoising.num_queries = 50
# the built-in data loader yields BGR images (detectron2's default), as the pretraining did
model.pixel_mean = list(PIXEL_MEAN)
model.pixel_std = list(PIXEL_STD)

optimizer.lr = 5e-4
optimizer.weight_decay = 1e-4
optimizer.params.lr_factor_func = L(LRMultiplierByName)(multipliers={"backbone.bottom_up": 0.1})

train.init_checkpoint = builtin_backbone_path(50)
train.max_iter = 1000
lr_multiplier = multistep(train.max_iter, steps=(0.85,), warmup_iters=50)
train.clip_grad.enabled = True
train.clip_grad.max_norm = 0.1
train.eval_period = 500
train.checkpointer.period = 500
train.checkpointer.max_to_keep = 3
train.output_dir = "./output/dino_R50_builtin"
