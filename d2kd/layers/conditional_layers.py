"""Full-attention transformer layers of the single-scale DETRs (Conditional DETR, DAB-DETR).

- :class:`TransformerEncoderLayer`: self-attention over the tokens (queries and keys carry the
  position embedding, values do not), then a feed-forward block; post-norm.
- :class:`ConditionalDecoderLayer`: DAB-DETR's decoder layer (Liu et al. 2022, Sec. 4 and
  Fig. 3, on Conditional DETR's): content and positional parts are projected separately; in the
  cross-attention each head's query is the concatenation ``[content_h, positional_h]`` and each
  head's key ``[memory_h, memory_position_h]``, so content and position match separately (the
  attention logit is their sum).

:func:`multi_head_attention` is the attention both use, for queries/keys and values of
different widths.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .deformable_layers import FeedForward


def multi_head_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int,
                         attn_mask: Optional[torch.Tensor] = None, key_padding_mask: Optional[torch.Tensor] = None,
                         dropout: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention split into heads (already projected inputs).

    Args:
        query: [B, N, E]; key: [B, S, E]; value: [B, S, Ev] (E and Ev divisible by ``num_heads``).
        attn_mask: [N, S] bool, True where query i may NOT attend to key j.
        key_padding_mask: [B, S] bool, True on padded keys.

    Returns:
        [B, N, Ev]; head h uses channels ``h*E/H:(h+1)*E/H`` of query/key, scaled by ``(E/H)^-0.5``.
    """
    B, N, _ = query.shape
    S = key.shape[1]

    def heads(x):
        return x.view(B, x.shape[1], num_heads, -1).transpose(1, 2)

    allowed = None
    if attn_mask is not None:
        allowed = ~attn_mask[None, None]
    if key_padding_mask is not None:
        keys = ~key_padding_mask[:, None, None, :].expand(B, 1, N, S)
        allowed = keys if allowed is None else allowed & keys
    out = F.scaled_dot_product_attention(heads(query), heads(key), heads(value), attn_mask=allowed,
                                         dropout_p=dropout)
    return out.transpose(1, 2).reshape(B, N, -1)


class TransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: ``norm(x + attn(x + pos, x + pos, x))`` then the feed-forward block.

    Args:
        embed_dim, num_heads: of the attention; ffn_dim, dropout, activation: of the FFN.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, ffn_dim: int = 2048, dropout: float = 0.1,
                 activation: str = "relu"):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(embed_dim)
        self.ffn = FeedForward(embed_dim, ffn_dim, dropout, activation)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, padding_mask: Optional[torch.Tensor] = None):
        """src, pos: [B, S, C]; padding_mask: [B, S] bool -> [B, S, C]."""
        q = src + pos
        attn = self.self_attn(q, q, src, key_padding_mask=padding_mask, need_weights=False)[0]
        return self.ffn(self.norm(src + self.dropout(attn)))


class ConditionalDecoderLayer(nn.Module):
    """DAB-DETR decoder layer: self-attention, conditional cross-attention, FFN (post-norm).

    Args:
        embed_dim, num_heads, ffn_dim, dropout, activation: as the encoder layer.
        use_query_pos: add the projected positional query to the cross-attention's content query
            (and the memory position to its key), as DAB-DETR does in its first layer only (and
            in every layer with ``keep_query_pos``).
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, ffn_dim: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", use_query_pos: bool = False):
        super().__init__()
        C = embed_dim
        self.num_heads = num_heads
        self.dropout_p = dropout
        self.sa_q_content, self.sa_q_pos = nn.Linear(C, C), nn.Linear(C, C)
        self.sa_k_content, self.sa_k_pos = nn.Linear(C, C), nn.Linear(C, C)
        self.sa_value, self.sa_out = nn.Linear(C, C), nn.Linear(C, C)
        self.norm1 = nn.LayerNorm(C)
        self.ca_q_content = nn.Linear(C, C)
        self.ca_q_pos = nn.Linear(C, C) if use_query_pos else None
        self.ca_k_content, self.ca_k_pos = nn.Linear(C, C), nn.Linear(C, C)
        self.ca_value, self.ca_q_sine, self.ca_out = nn.Linear(C, C), nn.Linear(C, C), nn.Linear(C, C)
        self.norm2 = nn.LayerNorm(C)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.ffn = FeedForward(C, ffn_dim, dropout, activation)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        query_sine: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_padding_mask: Optional[torch.Tensor] = None,
        self_attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            tgt: [B, N, C] content queries; query_pos: [B, N, C] positional queries (self-attention
                and, with ``use_query_pos``, cross-attention).
            query_sine: [B, N, C] the (scaled, size-modulated) sine embedding of the reference
                centres, the positional half of each cross-attention head's query.
            memory: [B, S, C]; memory_pos: [B, S, C] its position embedding.
            memory_padding_mask: [B, S] bool; self_attn_mask: [N, N] bool, True = may not attend.

        Returns:
            [B, N, C].
        """
        drop = self.dropout_p if self.training else 0.0
        q = self.sa_q_content(tgt) + self.sa_q_pos(query_pos)
        k = self.sa_k_content(tgt) + self.sa_k_pos(query_pos)
        attn = multi_head_attention(q, k, self.sa_value(tgt), self.num_heads, attn_mask=self_attn_mask, dropout=drop)
        tgt = self.norm1(tgt + self.dropout1(self.sa_out(attn)))

        q = self.ca_q_content(tgt)
        k = self.ca_k_content(memory)
        k_pos = self.ca_k_pos(memory_pos)
        if self.ca_q_pos is not None:
            q = q + self.ca_q_pos(query_pos)
            k = k + k_pos
        B, N, C = q.shape
        S, H = k.shape[1], self.num_heads
        q = torch.cat([q.view(B, N, H, -1), self.ca_q_sine(query_sine).view(B, N, H, -1)], dim=-1).flatten(2)
        k = torch.cat([k.view(B, S, H, -1), k_pos.view(B, S, H, -1)], dim=-1).flatten(2)
        attn = multi_head_attention(q, k, self.ca_value(memory), H, key_padding_mask=memory_padding_mask, dropout=drop)
        tgt = self.norm2(tgt + self.dropout2(self.ca_out(attn)))
        return self.ffn(tgt)
