"""Post-norm transformer layers built on multi-scale deformable attention.

- :class:`DeformableEncoderLayer`: deformable self-attention over the flattened feature levels,
  then a feed-forward block (Deformable DETR's encoder layer).
- :class:`DeformableDecoderLayer`: masked multi-head self-attention among the queries,
  deformable cross-attention into the encoder memory, then a feed-forward block.

Both are per-token except the decoder's self-attention, whose mask is what keeps query groups
apart (see :mod:`d2kd.detr.queries`).
"""
from typing import Optional

import torch
from torch import nn

from .ms_deform_attn import MultiScaleDeformableAttention

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "prelu": nn.PReLU}  # PReLU: DAB-DETR


class FeedForward(nn.Module):
    """``x + dropout(W2 dropout(act(W1 x)))`` followed by LayerNorm. [..., C] -> [..., C]."""

    def __init__(self, embed_dim: int, ffn_dim: int, dropout: float = 0.0, activation: str = "relu"):
        super().__init__()
        self.linear1 = nn.Linear(embed_dim, ffn_dim)
        self.activation = _ACTIVATIONS[activation]()
        self.linear2 = nn.Linear(ffn_dim, embed_dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        y = self.linear2(self.dropout1(self.activation(self.linear1(x))))
        return self.norm(x + self.dropout2(y))


class DeformableEncoderLayer(nn.Module):
    """One encoder layer: deformable self-attention (queries = tokens + position) and FFN.

    Args:
        embed_dim, num_heads, num_levels, num_points: of the deformable attention.
        ffn_dim: hidden width of the feed-forward block.
        dropout: after attention and inside the feed-forward block.
        activation: "relu", "gelu" or "prelu" (one learned slope).
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4,
                 ffn_dim: int = 1024, dropout: float = 0.1, activation: str = "relu"):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(embed_dim, num_heads, num_levels, num_points)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(embed_dim)
        self.ffn = FeedForward(embed_dim, ffn_dim, dropout, activation)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
        """
        Args:
            src: [B, S, C] tokens of all levels; pos: [B, S, C] their position + level embeddings.
            reference_points: [B, S, L, 2] each token's centre, normalised per padded level.
            spatial_shapes: [L, 2]; level_start_index: [L]; padding_mask: [B, S] bool or None.

        Returns:
            [B, S, C].
        """
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        return self.ffn(self.norm(src + self.dropout(attn)))


class DeformableDecoderLayer(nn.Module):
    """One decoder layer: masked self-attention, deformable cross-attention, FFN (post-norm).

    Args: as :class:`DeformableEncoderLayer`.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4,
                 ffn_dim: int = 1024, dropout: float = 0.1, activation: str = "relu"):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.cross_attn = MultiScaleDeformableAttention(embed_dim, num_heads, num_levels, num_points)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.ffn = FeedForward(embed_dim, ffn_dim, dropout, activation)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        reference_points: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        memory_padding_mask: Optional[torch.Tensor] = None,
        self_attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            tgt: [B, N, C] query content; query_pos: [B, N, C] positional queries.
            reference_points: [B, N, L, 4] boxes (or [B, N, L, 2] points) on the padded maps.
            memory: [B, S, C] encoder output; spatial_shapes [L, 2]; level_start_index [L].
            memory_padding_mask: [B, S] bool, True on padding.
            self_attn_mask: [N, N] bool, True where query i may not attend to query j.

        Returns:
            [B, N, C].
        """
        q = tgt + query_pos
        attn = self.self_attn(q, q, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attn))
        attn = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes,
                               level_start_index, memory_padding_mask)
        tgt = self.norm2(tgt + self.dropout2(attn))
        return self.ffn(tgt)
