# UniKD stage 1 on the built-in shapes data (CPU twin of dino_R50_absorb.py): AKEs on the frozen
# DINO R-50 built-in teacher (configs/detr/dino_R50_builtin.py; 4 levels, strides 8-64, width
# 256). CPU-sized: 100 queries (Tab. 6c: 100 vs 200 changes little), FFN 512, no dropout;
# Deformable DETR's optimiser as the paper; 1500 iterations at batch 4 (3 epochs of the 2000
# images: Tab. 6f shows the student's gain saturating after a few AKE epochs), lr / 10 at 80%.
#   python train_net.py --config-file configs/unikd/dino_R50_absorb_builtin.py
from detectron2.config import LazyCall as L

from d2kd.distill.unikd import AKEPair
from d2kd.engine.model_zoo import LRMultiplierByName
from d2kd.meta_arch import FrozenTeacher, UniKDAbsorb

from ..common.optim import AdamW as optimizer
from ..common.schedule import multistep
from ..detr.dino_R50_builtin import dataloader, model as teacher_model, train

model = L(UniKDAbsorb)(
    teacher=L(FrozenTeacher)(model=teacher_model, weights=train.output_dir + "/model_final.pth"),
    ake=L(AKEPair)(
        embed_dim=teacher_model.embed_dim,
        strides=[8, 16, 32, 64],
        num_classes=teacher_model.num_classes,
        num_queries=100,
        num_heads=8,
        num_points=4,
        ffn_dim=512,
        dropout=0.0,
    ),
)

optimizer.lr = 2e-4
optimizer.weight_decay = 1e-4
optimizer.params.lr_factor_func = L(LRMultiplierByName)(
    multipliers={"sampling_offsets": 0.1, "generator_ref": 0.1, "extractor_ref": 0.1}
)

train.init_checkpoint = ""
train.max_iter = 1500
lr_multiplier = multistep(train.max_iter, steps=(0.8,), warmup_iters=50)
train.clip_grad.enabled = True
train.clip_grad.max_norm = 0.1
train.eval_period = 0  # at the end
train.checkpointer.period = 500
train.checkpointer.max_to_keep = 3
train.output_dir = "./output/unikd_dino_R50_absorb_builtin"
