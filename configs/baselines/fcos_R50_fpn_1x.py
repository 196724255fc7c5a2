# FCOS R-50-FPN, COCO 1x (detectron2 model zoo LazyConfig: 39.0 box AP), 8 GPUs x 2 images.
from d2kd.engine.model_zoo import pretrained_weights

from ..common.data.coco import dataloader
from ..common.models.fcos import model
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier_1x as lr_multiplier
from ..common.train import train

model.backbone.bottom_up.stages.depth = 50
optimizer.lr = 0.01
train.max_iter = 90000
train.init_checkpoint = pretrained_weights("ImageNetPretrained/MSRA/R-50.pkl")
train.output_dir = "./output/fcos_R50_fpn_1x"
