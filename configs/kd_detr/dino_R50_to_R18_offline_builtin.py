# KD-DETR DINO R-50 -> DINO R-18 on the built-in data, *offline*: the twin of
# dino_R50_to_R18_variant_builtin.py (d2kd's variant) that reads the teacher's predictions at a
# fixed set of distillation points per image and view from a store (general points drawn once per
# stored image-view).
#   python -m d2kd.tools.dump_knowledge --config-file configs/kd_detr/dino_R50_to_R18_offline_builtin.py
#       (once: writes the store)
#   python train_net.py --config-file configs/kd_detr/dino_R50_to_R18_offline_builtin.py
#       (trains with no teacher forward)
# The store holds K = 2 views per image (resize + flip, d2kd.offline.views) and is checked against
# this config: teacher (config + sha256 of model.teacher.weights), data set, method settings,
# image format. model.teacher.store / dataloader.train.store name it (both default to STORE).
# Why the variant and not the published method (dino_R50_to_R18_builtin.py): a store fixes the
# general points per image and view, and a batch of stored items mixes dump batches, so the
# published method's one set per training batch, shared by its images and redrawn every step,
# cannot be reproduced offline; the variant's per-image points can.
from d2kd.offline.config import make_offline

from .dino_R50_to_R18_variant_builtin import dataloader, lr_multiplier, model, optimizer, train

STORE = "./output/knowledge/kd_detr_dino_R50_to_R18_builtin"
make_offline(model, dataloader, STORE)
train.output_dir = train.output_dir + "_offline"

# The config smoke test has no store: the offline teacher computes each step's knowledge
# through the store's encoding instead (OfflineTeacher(simulate=True)).
smoke_test = dict(overrides=["model.teacher.simulate=True"], skip="")
