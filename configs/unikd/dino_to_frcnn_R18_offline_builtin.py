# UniKD DINO R-50 -> Faster R-CNN R-18 on the built-in data, *offline*: the twin of
# dino_to_frcnn_R18_builtin.py that reads the teacher's knowledge (q, z, B^, P/N masks per image
# and view, d2kd/distill/unikd.py) from a store instead of running the teacher.
#   python -m d2kd.tools.dump_knowledge --config-file configs/unikd/dino_to_frcnn_R18_offline_builtin.py
#       (once: writes the store)
#   python train_net.py --config-file configs/unikd/dino_to_frcnn_R18_offline_builtin.py
#       (trains with no teacher forward)
# The store holds K = 2 views per image (resize + flip, d2kd.offline.views) and is checked against
# this config: teacher (config + sha256 of model.teacher.weights), data set, method settings,
# image format. model.teacher.store / dataloader.train.store name it (both default to STORE).
from d2kd.offline.config import make_offline

from .dino_to_frcnn_R18_builtin import dataloader, lr_multiplier, model, optimizer, train

STORE = "./output/knowledge/unikd_dino_to_frcnn_R18_builtin"
make_offline(model, dataloader, STORE)
train.output_dir = train.output_dir + "_offline"

# The config smoke test has no store: the offline teacher computes each step's knowledge
# through the store's encoding instead (OfflineTeacher(simulate=True)).
smoke_test = dict(overrides=["model.teacher.simulate=True"], skip="")
