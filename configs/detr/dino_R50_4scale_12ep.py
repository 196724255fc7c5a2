# DINO-4scale R-50, COCO, 12 epochs (Zhang et al. 2023, Table 1: 49.0 box AP), 16 images per
# batch: AdamW lr 1e-4 (backbone 1e-5), weight decay 1e-4, gradient clipping 0.1, 90k
# iterations with the lr divided by 10 after 11 epochs (82.5k). 900 queries, 100 denoising
# queries, label noise 0.5, box noise 1.0; class/L1/GIoU loss weights 1/5/2, matcher 2/5/2.
# ImageNet R-50 from torchvision (converted with detectron2's tools/convert-torchvision-to-d2.py:
# RGB input, torchvision's normalisation), read from $D2KD_WEIGHTS; nothing is downloaded.
from detectron2.config import LazyCall as L

from d2kd.engine.model_zoo import LRMultiplierByName, pretrained_weights

from ..common.data.coco import dataloader, detr_train_augmentations
from ..common.models.dino import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import multistep
from ..common.train import train

dataloader.train.mapper.augmentations = detr_train_augmentations
dataloader.train.mapper.image_format = "RGB"  # the test mapper follows
dataloader.train.total_batch_size = 16

model.num_classes = 80

optimizer.lr = 1e-4
optimizer.weight_decay = 1e-4
optimizer.params.lr_factor_func = L(LRMultiplierByName)(multipliers={"backbone.bottom_up": 0.1})

train.max_iter = 90000
lr_multiplier = multistep(train.max_iter, steps=(11 / 12,), warmup_iters=0)
train.clip_grad.enabled = True
train.clip_grad.max_norm = 0.1
train.init_checkpoint = pretrained_weights("ImageNetPretrained/torchvision/R-50.pkl")
train.eval_period = 7500
train.checkpointer.period = 7500
train.output_dir = "./output/dino_R50_4scale_12ep"
