# Deformable DETR R-50, COCO, 50 epochs (Zhu et al. 2021, Table 1: 43.8 box AP single-stage,
# 46.2 with iterative box refinement, 46.9 with both refinement and two-stage).
# Paper recipe: batch 32, AdamW lr 2e-4, weight decay 1e-4, lr x0.1 for the backbone and for the
# sampling-offset projections, gradient clipping 0.1, lr divided by 10 at epoch 40; 300 queries,
# dropout 0.1, focal loss (alpha 0.25, gamma 2), class/L1/GIoU weights 2/5/2, matcher 2/5/2.
# One COCO epoch is ~3665 iterations at batch 32.
#
# Variants (command-line overrides or a config importing this one):
#   iterative box refinement:   model.decoder.box_refine=True model.decoder.share_heads=False
#   + two-stage:                model.two_stage=True
from detectron2.config import LazyCall as L

from d2kd.engine.model_zoo import LRMultiplierByName, pretrained_weights

from ..common.data.coco import dataloader, detr_train_augmentations
from ..common.models.deformable_detr import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import multistep
from ..common.train import train

dataloader.train.mapper.augmentations = detr_train_augmentations
dataloader.train.mapper.image_format = "RGB"
dataloader.train.total_batch_size = 32

model.num_classes = 80

optimizer.lr = 2e-4
optimizer.weight_decay = 1e-4
optimizer.params.lr_factor_func = L(LRMultiplierByName)(
    multipliers={"backbone.bottom_up": 0.1, "sampling_offsets": 0.1}
)

train.max_iter = 50 * 3665
lr_multiplier = multistep(train.max_iter, steps=(40 / 50,), warmup_iters=0)
train.clip_grad.enabled = True
train.clip_grad.max_norm = 0.1
train.init_checkpoint = pretrained_weights("ImageNetPretrained/torchvision/R-50.pkl")
train.eval_period = 5 * 3665
train.checkpointer.period = 5 * 3665
train.output_dir = "./output/deformable_detr_R50_50ep"
