"""DINO-4scale with a ResNet-50 (Zhang et al. 2023), paper hyper-parameters, COCO classes.

Width, depth, levels, queries and backbone are plain fields (``model.embed_dim``,
``model.encoder.num_layers``, ``model.num_feature_levels``, ``model.num_queries``,
``model.backbone.bottom_up.stages.depth``); the sub-modules follow by interpolation.
"""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet

from d2kd.detr import (
    DINO,
    ChannelMapper,
    ContrastiveDenoising,
    DeformableDecoder,
    DeformableEncoder,
    HungarianMatcher,
    SetCriterion,
)
from d2kd.engine.model_zoo import resnet_stages
from d2kd.layers import PositionEmbeddingSine

model = L(DINO)(
    backbone=L(ChannelMapper)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="${..stages.norm}"),
            # torchvision-style ImageNet weights: stride in the 3x3 conv
            stages=L(resnet_stages)(depth=50, norm="FrozenBN", stride_in_1x1=False),
            out_features=["res3", "res4", "res5"],
            freeze_at=1,
        ),
        in_features="${.bottom_up.out_features}",
        out_channels="${..embed_dim}",
        num_outs="${..num_feature_levels}",
    ),
    position_embedding=L(PositionEmbeddingSine)(embed_dim="${..embed_dim}", temperature=20.0, normalize=True,
                                                offset=-0.5),
    encoder=L(DeformableEncoder)(
        embed_dim="${..embed_dim}",
        num_layers=6,
        num_heads=8,
        num_levels="${..num_feature_levels}",
        num_points=4,
        ffn_dim=2048,
        dropout=0.0,
    ),
    decoder=L(DeformableDecoder)(
        embed_dim="${..embed_dim}",
        num_layers=6,
        num_heads=8,
        num_levels="${..num_feature_levels}",
        num_points=4,
        ffn_dim=2048,
        dropout=0.0,
        num_classes="${..num_classes}",
        box_refine=True,
        look_forward_twice=True,
        dynamic_query_pos=True,
        final_norm=True,
        share_heads=True,
    ),
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, alpha=0.25, gamma=2.0),
        weight_dict={"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        focal_alpha=0.25,
        focal_gamma=2.0,
    ),
    denoising=L(ContrastiveDenoising)(
        num_classes="${..num_classes}",
        embed_dim="${..embed_dim}",
        num_queries=100,
        label_noise_ratio=0.5,
        box_noise_scale=1.0,
    ),
    num_classes=80,
    num_queries=900,
    embed_dim=256,
    num_feature_levels=4,
    # torchvision-style ImageNet weights: RGB input, ImageNet statistics
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    size_divisibility=32,
    select_topk=300,
)
