"""DAB-DETR (Liu et al., ICLR 2022): dynamic anchor boxes as DETR queries.

The model KD-DETR reports its main results on (the authors' code distils DAB-DETR): its
detection queries are a learned 4-d anchor box each with zero content, exactly the form of
KD-DETR's distillation points, so any ``(content, anchor)`` query group decodes as a detection
query would. Single-scale: the encoder and decoder attend over the C5 map with full attention
(:mod:`d2kd.layers.conditional_layers`). The rest (backbone, criterion, matching, inference,
the step-wise API and the record) is :class:`~d2kd.detr.base.DETRBase`'s.

Decoder, for layer d with reference box ``r_d = (x, y, w, h)`` (layer 0: ``sigmoid(anchor)``),
as the paper's Sec. 4 and its code (and transformers' ``DabDetr``):

1. ``e_d = sine(y, x, w, h)`` (2C channels, y first, as DETR's position embedding);
   positional query ``q_d = MLP(e_d)`` (Eq. 5, self-attention);
2. the cross-attention's positional part is the first C channels of ``e_d`` (x and y) times
   ``MLP(h_{d-1})`` (conditional scaling; 1 at layer 0), its x half times ``w_ref / w`` and its y
   half times ``h_ref / h`` with ``(w_ref, h_ref) = sigmoid(MLP(h_{d-1}))`` (width/height
   modulated attention, Eq. 6);
3. ``r_{d+1} = sigmoid(box(h_d) + inverse_sigmoid(r_d))``, detached (Eq. 4: anchor update), with
   the *raw* layer output ``h_d``, while the layer's predictions use ``norm(h_d)``:
   ``b_d = sigmoid(box(norm(h_d)) + inverse_sigmoid(r_d))``, as the released code does (the
   paper does not say which); one class head and one box head for all layers.
"""
from typing import Optional, Tuple

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from d2kd.layers import MLP, ConditionalDecoderLayer, TransformerEncoderLayer, box_sine_embedding, inverse_sigmoid
from d2kd.layers import prior_bias

from .base import DETECTION, DETRBase
from .queries import QueryGroup


class DABEncoder(nn.Module):
    """Full-attention encoder whose position embedding is scaled per token by ``MLP(x)`` at every
    layer (Conditional DETR / DAB-DETR).

    Args:
        embed_dim, num_layers, num_heads, ffn_dim, dropout, activation: of the layers.
    """

    num_levels = 1

    def __init__(self, embed_dim: int = 256, num_layers: int = 6, num_heads: int = 8, ffn_dim: int = 2048,
                 dropout: float = 0.1, activation: str = "relu"):
        super().__init__()
        self.embed_dim = embed_dim
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(embed_dim, num_heads, ffn_dim, dropout, activation) for _ in range(num_layers))
        self.query_scale = MLP(embed_dim, embed_dim, embed_dim, 2)

    def forward(self, src, pos, spatial_shapes, level_start_index, valid_ratios, padding_mask):
        """src, pos: [B, S, C]; padding_mask: [B, S] bool (the other arguments are the
        multi-scale encoders' and unused) -> memory [B, S, C]."""
        out = src
        for layer in self.layers:
            out = layer(out, pos * self.query_scale(out), padding_mask)
        return out


class DABDecoder(nn.Module):
    """DAB-DETR's decoder with its prediction heads (module doc).

    Args:
        embed_dim, num_layers, num_heads, ffn_dim, dropout, activation: of the layers.
        num_classes: K (sigmoid class heads).
        keep_query_pos: every layer (not only the first) adds the positional query in the
            cross-attention.
        modulate_hw: width/height-modulated cross-attention (Eq. 6).
        prior_prob: initial foreground probability of the class head.
    """

    num_levels = 1

    def __init__(self, embed_dim: int = 256, num_layers: int = 6, num_heads: int = 8, ffn_dim: int = 2048,
                 dropout: float = 0.1, activation: str = "relu", *, num_classes: int = 80,
                 keep_query_pos: bool = False, modulate_hw: bool = True, prior_prob: float = 0.01):
        super().__init__()
        if num_layers < 1:
            raise ValueError("the decoder needs at least one layer")
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.modulate_hw = modulate_hw
        self.keep_query_pos = keep_query_pos
        self.layers = nn.ModuleList(
            ConditionalDecoderLayer(embed_dim, num_heads, ffn_dim, dropout, activation,
                                    use_query_pos=keep_query_pos or d == 0)
            for d in range(num_layers))
        self.ref_point_head = MLP(2 * embed_dim, embed_dim, embed_dim, 2)
        self.query_scale = MLP(embed_dim, embed_dim, embed_dim, 2)
        self.ref_anchor_head = MLP(embed_dim, embed_dim, 2, 2) if modulate_hw else None
        self.norm = nn.LayerNorm(embed_dim)
        self.class_head = nn.Linear(embed_dim, num_classes)
        self.box_head = MLP(embed_dim, embed_dim, 4, 3)
        nn.init.constant_(self.class_head.bias, prior_bias(prior_prob))
        nn.init.zeros_(self.box_head.layers[-1].weight)
        nn.init.zeros_(self.box_head.layers[-1].bias)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(
        self,
        content: torch.Tensor,
        anchor_logits: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_padding_mask: Optional[torch.Tensor] = None,
        self_attn_mask: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decodes N queries.

        Args:
            content: [B, N, C]; anchor_logits: [B, N, 4] inverse_sigmoid of cxcywh anchors.
            memory, memory_pos: [B, S, C]; memory_padding_mask: [B, S] bool.
            self_attn_mask: [N, N] bool, True = may not attend.

        Returns:
            ``(logits [D, B, N, K], boxes [D, B, N, 4], hidden [D, B, N, C], references [D, B, N, 4])``.
        """
        C = self.embed_dim
        reference = anchor_logits.sigmoid()
        reference_logits = anchor_logits
        tgt = content
        all_logits, all_boxes, all_hidden, all_refs = [], [], [], []
        for d, layer in enumerate(self.layers):
            sine = box_sine_embedding(reference[..., [1, 0, 2, 3]], C // 2)  # [B, N, 2C], y first
            query_pos = self.ref_point_head(sine)
            query_sine = sine[..., :C] if d == 0 else sine[..., :C] * self.query_scale(tgt)
            if self.ref_anchor_head is not None:
                size = self.ref_anchor_head(tgt).sigmoid()  # (w_ref, h_ref)
                scale = torch.cat([(size[..., 1] / reference[..., 3])[..., None].expand(-1, -1, C // 2),
                                   (size[..., 0] / reference[..., 2])[..., None].expand(-1, -1, C // 2)], dim=-1)
                query_sine = query_sine * scale
            tgt = layer(tgt, query_pos, query_sine, memory, memory_pos, memory_padding_mask, self_attn_mask)
            hidden = self.norm(tgt)
            all_logits.append(self.class_head(hidden))
            all_boxes.append((self.box_head(hidden) + reference_logits).sigmoid())
            all_hidden.append(hidden)
            all_refs.append(reference)
            reference = (self.box_head(tgt) + reference_logits).sigmoid().detach()
            reference_logits = inverse_sigmoid(reference)
        return (torch.stack(all_logits), torch.stack(all_boxes), torch.stack(all_hidden), torch.stack(all_refs))


@META_ARCH_REGISTRY.register()
class DABDETR(DETRBase):
    """DAB-DETR: ``num_queries`` learned anchor boxes with zero content (module doc).

    Single-scale: ``num_feature_levels=1`` (the backbone's C5 through a 1x1 projection),
    no level embedding. Other arguments: see :class:`DETRBase`.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("num_feature_levels", 1)
        kwargs.setdefault("level_embed", False)
        super().__init__(**kwargs)
        N = self.num_queries
        # anchors spread over the image, medium-sized; learned from there
        anchors = torch.cat([torch.rand(N, 2), torch.full((N, 2), 0.1)], dim=1)
        self.query_anchors = nn.Parameter(inverse_sigmoid(anchors))

    def make_detection_queries(self, enc):
        B = enc.memory.shape[0]
        anchors = self.query_anchors[None].expand(B, -1, -1)
        return QueryGroup(DETECTION, anchors.new_zeros(B, self.num_queries, self.embed_dim), anchors), None

    def run_decoder(self, enc, content, anchor_logits, self_attn_mask, query_pos):
        if query_pos is not None:
            raise ValueError("DAB-DETR derives every positional query from the anchors; QueryGroup.position must be None")
        return self.decoder(content, anchor_logits, enc.memory, enc.pos_embed, enc.padding_mask, self_attn_mask)
