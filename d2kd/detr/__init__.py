"""DETR-family detectors (Deformable DETR, DINO) with a step-wise API for distillation."""
from .backbone import ChannelMapper
from .base import DETECTION, DETRBase
from .dab_detr import DABDecoder, DABDETR, DABEncoder
from .criterion import SetCriterion
from .deformable_detr import DeformableDETR
from .denoising import ContrastiveDenoising
from .dino import DINO
from .matcher import HungarianMatcher, pad_targets
from .proposals import ProposalHead, grid_proposals
from .queries import DecodedGroup, DETRRecord, EncoderProposals, EncoderState, QueryGroup, group_attention_mask
from .transformer import DeformableDecoder, DeformableEncoder, encoder_reference_points

__all__ = [k for k in globals().keys() if not k.startswith("_")]
