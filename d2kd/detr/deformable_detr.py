"""Deformable DETR (Zhu et al., ICLR 2021) with its iterative-box-refinement and two-stage options."""
import torch
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from d2kd.layers import box_sine_embedding, inverse_sigmoid

from .base import DETECTION, DETRBase
from .proposals import ProposalHead
from .queries import QueryGroup


@META_ARCH_REGISTRY.register()
class DeformableDETR(DETRBase):
    """Deformable DETR.

    Detection queries:

    - one-stage: ``num_queries`` learned content embeddings and learned anchor boxes;
    - ``two_stage``: the top-``num_queries`` encoder proposals (:class:`ProposalHead`) are the
      anchors (detached) and the content is a projection of the anchors' sine embedding
      (the paper's Sec. 4.1 two-stage variant).

    Iterative box refinement is the decoder's ``box_refine`` (with ``share_heads=False``, one head
    per layer as in the paper). Positional queries are computed once from the anchors
    (``decoder.dynamic_query_pos=False``). Other arguments: see :class:`DETRBase`.

    Args:
        two_stage: use encoder proposals as queries.
        proposal_base_scale: size of the finest level's grid proposals (two-stage).
    """

    def __init__(self, *, two_stage: bool = False, proposal_base_scale: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.two_stage = two_stage
        C, N = self.embed_dim, self.num_queries
        if two_stage:
            self.proposal_head = ProposalHead(C, self.num_classes, proposal_base_scale)
            self.content_proj = nn.Sequential(nn.Linear(2 * C, C), nn.LayerNorm(C))
        else:
            self.query_content = nn.Embedding(N, C)
            # anchors spread over the image, medium-sized; learned from there
            anchors = torch.cat([torch.rand(N, 2), torch.full((N, 2), 0.1)], dim=1)
            self.query_anchors = nn.Parameter(inverse_sigmoid(anchors))

    def make_detection_queries(self, enc):
        B = enc.memory.shape[0]
        if not self.two_stage:
            content = self.query_content.weight[None].expand(B, -1, -1)
            anchors = self.query_anchors[None].expand(B, -1, -1)
            return QueryGroup(DETECTION, content, anchors), None
        proposals = self.proposal_head(enc, self.num_queries)
        boxes = proposals.boxes.detach()
        content = self.content_proj(box_sine_embedding(boxes, self.embed_dim // 2))
        return QueryGroup(DETECTION, content, inverse_sigmoid(boxes)), proposals
