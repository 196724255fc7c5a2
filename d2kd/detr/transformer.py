"""Deformable transformer encoder and decoder (with iterative box refinement) of the DETR models.

The decoder works on anchor boxes: every query carries a content embedding and a reference box;
its positional query is an MLP of the box's sine embedding (as in DAB-DETR/DINO), so a query is
fully described by ``(content, anchor)`` and any group of such queries can be decoded
(:class:`d2kd.detr.queries.QueryGroup`).
"""
from typing import Optional, Tuple

import torch
from torch import nn

from d2kd.layers import (
    MLP,
    DeformableDecoderLayer,
    DeformableEncoderLayer,
    box_sine_embedding,
    inverse_sigmoid,
    prior_bias,
)


def encoder_reference_points(spatial_shapes: torch.Tensor, valid_ratios: torch.Tensor) -> torch.Tensor:
    """Each encoder token's pixel centre, seen from every level.

    Centres are normalised by the *valid* size of their own level, then scaled by each level's
    valid ratio, i.e. expressed in the padded coordinates deformable attention samples in.

    Args:
        spatial_shapes: [L, 2] int64 (H_l, W_l).
        valid_ratios: [B, L, 2] (w, h) valid fractions.

    Returns:
        [B, S, L, 2] (x, y).
    """
    points = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        ys = (torch.arange(h, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5)
        xs = (torch.arange(w, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5)
        ys = ys[None] / (valid_ratios[:, None, lvl, 1] * h)  # [B, H_l]
        xs = xs[None] / (valid_ratios[:, None, lvl, 0] * w)  # [B, W_l]
        grid = torch.stack(
            [xs[:, None, :].expand(-1, h, -1), ys[:, :, None].expand(-1, -1, w)], dim=-1
        )  # [B, H_l, W_l, 2]
        points.append(grid.flatten(1, 2))
    points = torch.cat(points, dim=1)
    return points[:, :, None] * valid_ratios[:, None]


class DeformableEncoder(nn.Module):
    """A stack of :class:`~d2kd.layers.DeformableEncoderLayer` (``num_layers`` may be 0).

    Args:
        embed_dim, num_heads, num_levels, num_points, ffn_dim, dropout, activation: of each layer.
        num_layers: encoder depth.
    """

    def __init__(self, embed_dim: int = 256, num_layers: int = 6, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4, ffn_dim: int = 1024, dropout: float = 0.1, activation: str = "relu"):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_levels = num_levels
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(embed_dim, num_heads, num_levels, num_points, ffn_dim, dropout, activation)
            for _ in range(num_layers)
        )

    def forward(self, src, pos, spatial_shapes, level_start_index, valid_ratios, padding_mask):
        """
        Args:
            src: [B, S, C] flattened levels; pos: [B, S, C] position + level embeddings.
            spatial_shapes: [L, 2]; level_start_index: [L]; valid_ratios: [B, L, 2];
            padding_mask: [B, S] bool.

        Returns:
            memory: [B, S, C].
        """
        if not self.layers:
            return src
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios)
        out = src
        for layer in self.layers:
            out = layer(out, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return out


class DeformableDecoder(nn.Module):
    """Deformable decoder with per-layer prediction heads and iterative box refinement.

    For each layer d, with reference box ``r_d`` (layer 0: the anchors ``sigmoid(a)``):

    1. positional query ``q_d = MLP(sine(r_d))`` (``dynamic_query_pos``, DINO), or ``q_0`` kept
       for all layers (Deformable DETR keeps its positional queries fixed); ``q_0`` may also be
       given by the caller (Deformable DETR's learned positional embeddings, ``query_pos``);
    2. the layer attends with ``r_d`` (scaled to the padded maps) as cross-attention box;
    3. ``h_d = norm(out_d)`` (``final_norm``), class logits ``cls(h_d)``, box
       ``b_d = sigmoid(box(h_d) + inverse_sigmoid(r_d'))``;
    4. ``r_{d+1} = b_d.detach()`` (``box_refine``) or ``r_{d+1} = r_0`` (no refinement).

    ``r_d'`` is ``r_d`` itself, except with ``look_forward_twice`` (DINO), where it is the
    undetached ``b_{d-1}``, so layer d's box loss also trains layer d-1's box head. Layer 0
    predicts relative to the anchor logits directly (gradients reach learned anchors).

    ``point_anchors`` (Deformable DETR's one-stage code, and transformers'): the anchors are
    points. Their size logits are ignored and taken as 0 (size 0.5), and every layer whose
    reference is still an anchor (layer 0, or all layers without ``box_refine``) samples around
    the point with offsets in pixels of each level (2-d reference points) instead of within a box;
    boxes are still predicted as ``sigmoid(delta + inverse_sigmoid(r_d))``, so their size comes
    from the head alone. ``references`` then hold size 0.5 for those layers.

    Args:
        embed_dim, num_heads, num_levels, num_points, ffn_dim, dropout, activation: of each layer.
        num_layers: decoder depth D.
        num_classes: K, outputs of the class heads (sigmoid, no background).
        box_refine: iterative box refinement.
        look_forward_twice: DINO's gradient path through the previous layer's box.
        dynamic_query_pos: recompute positional queries from each layer's reference box.
        final_norm: LayerNorm on each layer's output before the heads (DINO).
        share_heads: one class head and one box head for all layers (else one per layer).
        prior_prob: initial foreground probability of the class heads (focal-loss init).
        point_anchors: the anchors are points (see above).
        raw_refinement: with ``box_refine``, the next reference is
            ``sigmoid(box(out_d) + inverse_sigmoid(r_d))`` from the layer output *before* the final
            norm, while the layer's prediction ``b_d`` uses the normed one (DINO's and DAB-DETR's
            released code); else ``r_{d+1} = b_d``. With ``look_forward_twice`` the next layer
            predicts relative to that undetached next reference.
        scaled_query_pos: positional queries from the reference boxes as scaled to the padded
            maps by the first level's valid ratios (DINO's released code); else from the boxes
            relative to the unpadded image. The two differ only on padded images.
        anchor_pos: build the MLP that turns reference boxes into positional queries; False when
            the model always passes ``query_pos`` (its positional queries are not a function of
            the anchors).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_layers: int = 6,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        *,
        num_classes: int = 80,
        box_refine: bool = True,
        look_forward_twice: bool = False,
        dynamic_query_pos: bool = True,
        final_norm: bool = True,
        share_heads: bool = True,
        prior_prob: float = 0.01,
        point_anchors: bool = False,
        anchor_pos: bool = True,
        raw_refinement: bool = False,
        scaled_query_pos: bool = False,
    ):
        super().__init__()
        if dynamic_query_pos and not anchor_pos:
            raise ValueError("dynamic_query_pos recomputes positional queries from the boxes: it needs anchor_pos")
        if num_layers < 1:
            raise ValueError("the decoder needs at least one layer")
        if embed_dim % 2:
            raise ValueError("embed_dim must be even (sine embeddings)")
        self.embed_dim = embed_dim
        self.num_levels = num_levels
        self.num_classes = num_classes
        self.box_refine = box_refine
        self.look_forward_twice = look_forward_twice
        self.dynamic_query_pos = dynamic_query_pos
        self.point_anchors = point_anchors
        self.raw_refinement = raw_refinement
        self.scaled_query_pos = scaled_query_pos
        self.layers = nn.ModuleList(
            DeformableDecoderLayer(embed_dim, num_heads, num_levels, num_points, ffn_dim, dropout, activation)
            for _ in range(num_layers)
        )
        self.query_pos_head = MLP(2 * embed_dim, embed_dim, embed_dim, 2) if anchor_pos else None
        self.norm = nn.LayerNorm(embed_dim) if final_norm else nn.Identity()
        num_heads_sets = 1 if share_heads else num_layers
        self.class_heads = nn.ModuleList(nn.Linear(embed_dim, num_classes) for _ in range(num_heads_sets))
        self.box_heads = nn.ModuleList(MLP(embed_dim, embed_dim, 4, 3) for _ in range(num_heads_sets))
        for head in self.class_heads:
            nn.init.constant_(head.bias, prior_bias(prior_prob))
        for head in self.box_heads:
            # zero deltas: each layer starts by predicting its reference box
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def class_head(self, layer: int) -> nn.Module:
        return self.class_heads[min(layer, len(self.class_heads) - 1)]

    def box_head(self, layer: int) -> nn.Module:
        return self.box_heads[min(layer, len(self.box_heads) - 1)]

    def positional_queries(self, boxes: torch.Tensor) -> torch.Tensor:
        """[B, N, 4] reference boxes (cxcywh) -> [B, N, C] positional queries."""
        if self.query_pos_head is None:
            raise ValueError(
                "this decoder derives no positional queries from anchors (anchor_pos=False): "
                "every query group must bring its own (QueryGroup.position)"
            )
        return self.query_pos_head(box_sine_embedding(boxes, self.embed_dim // 2))

    def forward(
        self,
        content: torch.Tensor,
        anchor_logits: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        valid_ratios: torch.Tensor,
        memory_padding_mask: Optional[torch.Tensor] = None,
        self_attn_mask: Optional[torch.Tensor] = None,
        query_pos: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decodes N queries.

        Args:
            content: [B, N, C]; anchor_logits: [B, N, 4] inverse_sigmoid of cxcywh anchors.
            memory: [B, S, C]; spatial_shapes: [L, 2]; level_start_index: [L];
            valid_ratios: [B, L, 2]; memory_padding_mask: [B, S] bool.
            self_attn_mask: [N, N] bool, True = may not attend (see ``group_attention_mask``).
            query_pos: [B, N, C] positional queries of layer 0 (and of all layers, as positional
                queries are then fixed); None derives them from the anchors.

        Returns:
            ``(logits [D, B, N, K], boxes [D, B, N, 4], hidden [D, B, N, C], references [D, B, N, 4])``.
        """
        if query_pos is not None and self.dynamic_query_pos:
            raise ValueError("query_pos is given, but dynamic_query_pos recomputes it at every layer")
        if self.point_anchors:
            anchor_logits = torch.cat([anchor_logits[..., :2], torch.zeros_like(anchor_logits[..., 2:])], dim=-1)
        scale = torch.cat([valid_ratios, valid_ratios], dim=-1)[:, None]  # [B, 1, L, 4]
        reference = anchor_logits.sigmoid()
        reference_logits = anchor_logits  # what layer d's box delta is added to
        pos_scale = scale[:, :, 0] if self.scaled_query_pos else 1.0  # [B, 1, 4]
        if query_pos is None:
            query_pos = self.positional_queries(reference * pos_scale)
        points = self.point_anchors  # the reference is still a point anchor
        tgt = content
        all_logits, all_boxes, all_hidden, all_refs = [], [], [], []
        for d, layer in enumerate(self.layers):
            if d > 0 and self.dynamic_query_pos:
                query_pos = self.positional_queries(reference * pos_scale)
            if points:
                sampling_ref = reference[:, :, None, :2] * valid_ratios[:, None]  # [B, N, L, 2]
            else:
                sampling_ref = reference[:, :, None] * scale  # [B, N, L, 4]
            tgt = layer(tgt, query_pos, sampling_ref, memory, spatial_shapes,
                        level_start_index, memory_padding_mask, self_attn_mask)
            hidden = self.norm(tgt)
            box = (self.box_head(d)(hidden) + reference_logits).sigmoid()
            all_logits.append(self.class_head(d)(hidden))
            all_boxes.append(box)
            all_hidden.append(hidden)
            all_refs.append(reference)
            if self.box_refine:
                points = False
                if self.raw_refinement:
                    following = (self.box_head(d)(tgt) + inverse_sigmoid(reference)).sigmoid()
                else:
                    following = box
                reference = following.detach()
                reference_logits = inverse_sigmoid(following if self.look_forward_twice else reference)
        return (torch.stack(all_logits), torch.stack(all_boxes), torch.stack(all_hidden), torch.stack(all_refs))
