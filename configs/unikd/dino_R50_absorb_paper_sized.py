# UniKD stage 1 as dino_R50_absorb.py with the AKEs at the paper's parameter count (1.56M per AKE,
# Sec. 3.2.1; d2kd.distill.unikd.PAPER_SIZED_AKE: FFN 384 instead of Deformable DETR's 1024).
# A stage-2 config distils through these AKEs with
#   model.losses.unikd.ake.ake.ffn_dim=384 model.losses.unikd.ake.weights=<this output>/model_final.pth
#   python train_net.py --config-file configs/unikd/dino_R50_absorb_paper_sized.py --num-gpus 8
from d2kd.distill.unikd import PAPER_SIZED_AKE

from .dino_R50_absorb import dataloader, lr_multiplier, model, optimizer, train

model.ake.update(PAPER_SIZED_AKE)
train.output_dir = "./output/unikd_dino_R50_absorb_paper_sized"
