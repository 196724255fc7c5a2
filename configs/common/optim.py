# Optimizers (detectron2's configs/common/optim.py) with per-module learning-rate multipliers:
#   from d2kd.engine.model_zoo import LRMultiplierByName
#   optimizer.params.lr_factor_func = L(LRMultiplierByName)(multipliers={"backbone": 0.1})
# `optimizer.params.model` is set to the model by train_net.py before instantiation.
import torch

from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params


SGD = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(
        base_lr="${..lr}",
        weight_decay_norm=0.0,
        lr_factor_func=None,
    ),
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
)

AdamW = L(torch.optim.AdamW)(
    params=L(get_default_optimizer_params)(
        base_lr="${..lr}",
        weight_decay_norm=0.0,
        lr_factor_func=None,
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.1,
)
