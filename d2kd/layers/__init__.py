"""Reusable neural-network pieces of the DETR family (and a ResNet for training from scratch)."""
from .box_ops import (
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    inverse_sigmoid,
    pairwise_box_iou,
    pairwise_generalized_box_iou,
)
from .conditional_layers import ConditionalDecoderLayer, TransformerEncoderLayer, multi_head_attention
from .deformable_layers import DeformableDecoderLayer, DeformableEncoderLayer, FeedForward
from .focal_loss import focal_class_cost, prior_bias, sigmoid_focal_loss
from .mlp import MLP
from .ms_deform_attn import MultiScaleDeformableAttention
from .position_embedding import PositionEmbeddingSine, box_sine_embedding, sine_embedding
from .resnet import ScratchResNet

__all__ = [k for k in globals().keys() if not k.startswith("_")]
