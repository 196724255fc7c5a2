"""DINO (Zhang et al., ICLR 2023): DETR with improved denoising anchor boxes."""
from detectron2.modeling import META_ARCH_REGISTRY

from torch import nn

from d2kd.layers import inverse_sigmoid

from .base import DETECTION, DETRBase
from .proposals import ProposalHead
from .queries import QueryGroup


@META_ARCH_REGISTRY.register()
class DINO(DETRBase):
    """DINO.

    - Mixed query selection: the top-``num_queries`` encoder proposals give the anchors
      (detached); the content queries are learned embeddings, shared by all images.
    - Contrastive denoising: pass a :class:`~d2kd.detr.denoising.ContrastiveDenoising` as
      ``denoising`` (training only).
    - Look forward twice and per-layer positional queries from the current boxes: the decoder's
      ``look_forward_twice`` and ``dynamic_query_pos`` (both True in DINO's configs), with
      shared heads and a final LayerNorm.

    Args:
        proposal_base_scale: size of the finest level's grid proposals.
        Others: see :class:`DETRBase`.
    """

    def __init__(self, *, proposal_base_scale: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.proposal_head = ProposalHead(self.embed_dim, self.num_classes, proposal_base_scale)
        self.query_content = nn.Embedding(self.num_queries, self.embed_dim)

    def make_detection_queries(self, enc):
        proposals = self.proposal_head(enc, self.num_queries)
        B = enc.memory.shape[0]
        content = self.query_content.weight[None].expand(B, -1, -1)
        anchors = inverse_sigmoid(proposals.boxes.detach())
        return QueryGroup(DETECTION, content, anchors), proposals
