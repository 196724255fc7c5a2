# UniKD DINO-4scale R-50 -> Faster R-CNN R-50 on COCO, *offline* (UniKD Sec. 3.3, Tab. 3-4): the
# twin of dino_to_frcnn_R50.py that reads the teacher's knowledge from a store. Dump on GPUs with
# --batch-size 8 (images of one size are batched together); about 410 KB per image-view for
# N = 200 queries at fp16 vs about 9 MB for DINO's full 4-level features at 800x1333.
#   python -m d2kd.tools.dump_knowledge --config-file configs/unikd/dino_to_frcnn_R50_offline.py
#       (once: writes the store)
#   python train_net.py --config-file configs/unikd/dino_to_frcnn_R50_offline.py
#       (trains with no teacher forward)
# The store holds K = 2 views per image (resize + flip, d2kd.offline.views) and is checked against
# this config: teacher (config + sha256 of model.teacher.weights), data set, method settings,
# image format. model.teacher.store / dataloader.train.store name it (both default to STORE).
from d2kd.offline.config import make_offline

from .dino_to_frcnn_R50 import dataloader, lr_multiplier, model, optimizer, train

STORE = "./output/knowledge/unikd_dino_to_frcnn_R50"
make_offline(model, dataloader, STORE)
train.output_dir = train.output_dir + "_offline"

# The config smoke test has no store: the offline teacher computes each step's knowledge
# through the store's encoding instead (OfflineTeacher(simulate=True)).
smoke_test = dict(overrides=["model.teacher.simulate=True"], skip="")
