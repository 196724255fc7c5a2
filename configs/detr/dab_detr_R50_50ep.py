# DAB-DETR R-50, COCO, 50 epochs (Liu et al. 2022, Table 2: 42.2 box AP; KD-DETR's student,
# 42.1 AP in its tables as quoted by the issue that added it). Recipe of the paper and its code:
# batch 16, AdamW lr 1e-4 (backbone 1e-5), weight decay 1e-4, gradient clipping 0.1, lr divided by
# 10 after epoch 40; 300 queries, dropout 0, PReLU; focal loss (alpha 0.25), class/L1/GIoU
# weights 1/5/2, matcher 2/5/2. One COCO epoch is ~7330 iterations at batch 16.
from detectron2.config import LazyCall as L

from d2kd.engine.model_zoo import LRMultiplierByName, pretrained_weights

from ..common.data.coco import dataloader, detr_train_augmentations
from ..common.models.dab_detr import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import multistep
from ..common.train import train

dataloader.train.mapper.augmentations = detr_train_augmentations
dataloader.train.mapper.image_format = "RGB"
dataloader.train.total_batch_size = 16

model.num_classes = 80
model.encoder.activation = "prelu"
model.decoder.activation = "prelu"

optimizer.lr = 1e-4
optimizer.weight_decay = 1e-4
optimizer.params.lr_factor_func = L(LRMultiplierByName)(multipliers={"backbone.bottom_up": 0.1})

train.max_iter = 50 * 7330
lr_multiplier = multistep(train.max_iter, steps=(40 / 50,), warmup_iters=0)
train.clip_grad.enabled = True
train.clip_grad.max_norm = 0.1
train.init_checkpoint = pretrained_weights("ImageNetPretrained/torchvision/R-50.pkl")
train.eval_period = 5 * 7330
train.checkpointer.period = 5 * 7330
train.output_dir = "./output/dab_detr_R50_50ep"
