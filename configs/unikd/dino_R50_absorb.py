# UniKD stage 1 (absorbing, Eq. 6): AKE_ct and AKE_pos trained on the frozen DINO-4scale R-50
# teacher's encoder output (4 levels, strides 8-64, width 256), COCO. Paper settings (Sec. 4.1):
# N = 200 queries, one decoder layer each for f_ct, f_pos and f_e, Deformable DETR's recipe
# (AdamW 2e-4, weight decay 1e-4, lr x0.1 for sampling offsets and reference points, clipping
# 0.1, losses 2/5/2), 15 epochs, lr divided by 10 after 12 (Deformable DETR's 40/50). Batch 16
# on the teacher's own data pipeline (RGB, DETR augmentation). Only the AKEs are trained; the
# checkpoint (model_final.pth, keys ake.*) is what the stage-2 configs load. Evaluation reports
# the AP of the content AKE's own predictions (Tab. 6f "Teacher" column).
#   python train_net.py --config-file configs/unikd/dino_R50_absorb.py --num-gpus 8
from detectron2.config import LazyCall as L

from d2kd.distill.unikd import AKEPair
from d2kd.engine.model_zoo import LRMultiplierByName
from d2kd.meta_arch import FrozenTeacher, UniKDAbsorb

from ..common.optim import AdamW as optimizer
from ..common.schedule import multistep
from ..detr.dino_R50_4scale_12ep import dataloader, model as teacher_model, train

COCO_EPOCH = 7330  # iterations per COCO epoch at batch 16

model = L(UniKDAbsorb)(
    teacher=L(FrozenTeacher)(model=teacher_model, weights=train.output_dir + "/model_final.pth"),
    ake=L(AKEPair)(
        embed_dim=teacher_model.embed_dim,
        strides=[8, 16, 32, 64],  # ChannelMapper: res3-res5 + one extra level
        num_classes=teacher_model.num_classes,
        num_queries=200,
        num_heads=8,
        num_points=4,
        ffn_dim=1024,
        dropout=0.1,
    ),
)

dataloader.train.total_batch_size = 16

optimizer.lr = 2e-4
optimizer.weight_decay = 1e-4
optimizer.params.lr_factor_func = L(LRMultiplierByName)(
    multipliers={"sampling_offsets": 0.1, "generator_ref": 0.1, "extractor_ref": 0.1}
)

train.init_checkpoint = ""  # the AKEs start from scratch; the teacher loads its own weights
train.max_iter = 15 * COCO_EPOCH
lr_multiplier = multistep(train.max_iter, steps=(12 / 15,), warmup_iters=0)
train.clip_grad.enabled = True
train.clip_grad.max_norm = 0.1
train.eval_period = 5 * COCO_EPOCH
train.checkpointer.period = 5 * COCO_EPOCH
train.output_dir = "./output/unikd_dino_R50_absorb"
