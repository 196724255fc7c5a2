"""Deformable DETR (Zhu et al., ICLR 2021) with its iterative-box-refinement and two-stage options."""
import torch
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from d2kd.layers import box_sine_embedding, inverse_sigmoid

from .base import DETECTION, DETRBase
from .proposals import ProposalHead
from .queries import QueryGroup

QUERY_TYPES = ("anchor", "paper")


@META_ARCH_REGISTRY.register()
class DeformableDETR(DETRBase):
    """Deformable DETR.

    Detection queries, ``query_type="anchor"`` (d2kd's default, DAB-DETR-style, so that any
    ``(content, anchor)`` query group, e.g. KD-DETR's distillation points, can be decoded):

    - one-stage: ``num_queries`` learned content embeddings and learned anchor boxes; the
      positional queries are the decoder's MLP of the anchors' sine embedding;
    - ``two_stage``: the top-``num_queries`` encoder proposals (:class:`ProposalHead`, ranked by
      their best class) are the anchors (detached) and the content is a projection of the
      anchors' sine embedding.

    ``query_type="paper"``: the queries of the paper and of its released code (which
    transformers' ``DeformableDetr`` follows), for checkpoints trained that way:

    - one-stage: a learned embedding per query split into a positional and a content half; the
      reference point is ``sigmoid(Linear(positional))`` (Sec. 4.1), a 2-d point: the decoder
      needs ``point_anchors=True``. Its positional queries are not a function of the anchors,
      so a query group without its own ``position`` cannot be decoded (error);
    - two-stage: positional and content queries are the two halves of
      ``LayerNorm(Linear(sine(proposal)))`` (2C wide); proposals are ranked by the first class
      logit and their loss uses every label as 0 (class-agnostic, as the released code).

    In both, the decoder has no anchor MLP (``anchor_pos=False``) and fixed positional queries.
    Iterative box refinement is the decoder's ``box_refine`` (with ``share_heads=False``, one head
    per layer as in the paper). Other arguments: see :class:`DETRBase`.

    Args:
        two_stage: use encoder proposals as queries.
        query_type: "anchor" or "paper" (above).
        proposal_base_scale: size of the finest level's grid proposals (two-stage).
    """

    def __init__(self, *, two_stage: bool = False, query_type: str = "anchor", proposal_base_scale: float = 0.05,
                 **kwargs):
        super().__init__(**kwargs)
        if query_type not in QUERY_TYPES:
            raise ValueError(f"query_type must be one of {QUERY_TYPES}, got {query_type!r}")
        if query_type == "paper":
            want = {"decoder.point_anchors": (self.decoder.point_anchors, not two_stage),
                    "decoder.anchor_pos": (self.decoder.query_pos_head is not None, False),
                    "decoder.dynamic_query_pos": (self.decoder.dynamic_query_pos, False)}
            wrong = [f"{k}={got} (expected {exp})" for k, (got, exp) in want.items() if got != exp]
            if wrong:
                raise ValueError(f"query_type='paper' with two_stage={two_stage} needs " + ", ".join(wrong))
        self.two_stage = two_stage
        self.query_type = query_type
        C, N = self.embed_dim, self.num_queries
        if two_stage:
            self.proposal_head = ProposalHead(C, self.num_classes, proposal_base_scale,
                                              class_agnostic=query_type == "paper")
            if query_type == "paper":
                self.query_proj = nn.Sequential(nn.Linear(2 * C, 2 * C), nn.LayerNorm(2 * C))
            else:
                self.content_proj = nn.Sequential(nn.Linear(2 * C, C), nn.LayerNorm(C))
        elif query_type == "paper":
            self.query_embedding = nn.Embedding(N, 2 * C)
            self.reference_points = nn.Linear(C, 2)
            nn.init.xavier_uniform_(self.reference_points.weight)
            nn.init.zeros_(self.reference_points.bias)
        else:
            self.query_content = nn.Embedding(N, C)
            # anchors spread over the image, medium-sized; learned from there
            anchors = torch.cat([torch.rand(N, 2), torch.full((N, 2), 0.1)], dim=1)
            self.query_anchors = nn.Parameter(inverse_sigmoid(anchors))

    def _paper_two_stage_queries(self, anchor_logits):
        """[B, N, 4] anchors -> (position, content), each [B, N, C]."""
        embedded = self.query_proj(box_sine_embedding(anchor_logits.sigmoid(), self.embed_dim // 2))
        return embedded.split(self.embed_dim, dim=-1)

    def anchor_positions(self, anchor_logits):
        if self.query_type == "anchor":
            return super().anchor_positions(anchor_logits)
        if self.two_stage:
            return self._paper_two_stage_queries(anchor_logits)[0]
        raise ValueError(
            "this Deformable DETR (query_type='paper', one-stage) has learned positional queries that "
            "no anchor determines: a query group decoded with it must give QueryGroup.position"
        )

    def group_positions(self, groups):
        if self.query_type == "anchor":
            return super().group_positions(groups)
        # the decoder has no anchor MLP: every group's positions come from the model
        return torch.cat([g.position if g.position is not None else self.anchor_positions(g.anchor_logits)
                          for g in groups], dim=1)

    def proposal_targets(self, targets):
        if self.query_type != "paper":
            return targets
        return [dict(t, labels=torch.zeros_like(t["labels"])) for t in targets]

    def make_detection_queries(self, enc):
        B = enc.memory.shape[0]
        C = self.embed_dim
        if not self.two_stage:
            if self.query_type == "paper":
                position, content = self.query_embedding.weight[None].expand(B, -1, -1).split(C, dim=-1)
                xy = self.reference_points(position)
                anchors = torch.cat([xy, torch.zeros_like(xy)], dim=-1)  # point anchors: size ignored
                return QueryGroup(DETECTION, content, anchors, position=position), None
            content = self.query_content.weight[None].expand(B, -1, -1)
            anchors = self.query_anchors[None].expand(B, -1, -1)
            return QueryGroup(DETECTION, content, anchors), None
        proposals = self.proposal_head(enc, self.num_queries)
        boxes = proposals.boxes.detach()
        anchors = inverse_sigmoid(boxes)
        if self.query_type == "paper":
            position, content = self._paper_two_stage_queries(anchors)
            return QueryGroup(DETECTION, content, anchors, position=position), proposals
        content = self.content_proj(box_sine_embedding(boxes, self.embed_dim // 2))
        return QueryGroup(DETECTION, content, anchors), proposals
