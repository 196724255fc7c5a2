"""DAB-DETR with a ResNet-50 (Liu et al. 2022), paper hyper-parameters, COCO classes.

Single-scale (C5), 6 encoder / 6 decoder full-attention layers, width 256, FFN 2048, 300
queries, dropout 0 (the authors' code), focal loss; the model of KD-DETR's main results.
"""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet

from d2kd.detr import DABDecoder, DABDETR, DABEncoder, ChannelMapper, HungarianMatcher, SetCriterion
from d2kd.engine.model_zoo import resnet_stages
from d2kd.layers import PositionEmbeddingSine

model = L(DABDETR)(
    backbone=L(ChannelMapper)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="${..stages.norm}"),
            # torchvision-style ImageNet weights: stride in the 3x3 conv
            stages=L(resnet_stages)(depth=50, norm="FrozenBN", stride_in_1x1=False),
            out_features=["res5"],
            freeze_at=1,
        ),
        in_features="${.bottom_up.out_features}",
        out_channels="${..embed_dim}",
        num_outs=1,
        num_groups=0,  # a plain 1x1 projection
    ),
    # DAB-DETR: temperature 20, coordinates y / H_valid (no half-pixel offset)
    position_embedding=L(PositionEmbeddingSine)(embed_dim="${..embed_dim}", temperature=20.0,
                                                normalize=True, offset=0.0),
    encoder=L(DABEncoder)(embed_dim="${..embed_dim}", num_layers=6, num_heads=8, ffn_dim=2048, dropout=0.0),
    decoder=L(DABDecoder)(
        embed_dim="${..embed_dim}",
        num_layers=6,
        num_heads=8,
        ffn_dim=2048,
        dropout=0.0,
        num_classes="${..num_classes}",
        keep_query_pos=False,
        modulate_hw=True,
    ),
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, alpha=0.25, gamma=2.0),
        weight_dict={"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        focal_alpha=0.25,
        focal_gamma=2.0,
    ),
    num_classes=80,
    num_queries=300,
    embed_dim=256,
    num_feature_levels=1,
    level_embed=False,
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    size_divisibility=32,
    select_topk=300,
)
