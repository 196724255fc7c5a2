"""Sine position embeddings (Vaswani et al. 2017, as used by DETR and its successors).

One core, :func:`sine_embedding`, maps scalar coordinates in [0, 1] to ``num_feats`` channels of
interleaved sines and cosines at geometrically spaced frequencies. It serves both

- :class:`PositionEmbeddingSine`, the per-pixel embedding of a (padded) feature map, and
- :func:`box_sine_embedding`, the embedding of anchor boxes or points that DAB-DETR/DINO-style
  decoders turn into positional queries.
"""
import math

import torch
from torch import nn


def sine_embedding(
    coords: torch.Tensor, num_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi
) -> torch.Tensor:
    """Sine embedding of scalar coordinates.

    Args:
        coords: [...] coordinates, normally in [0, 1].
        num_feats: channels per coordinate (even).
        temperature: base of the wavelength progression.
        scale: multiplies ``coords`` first (2*pi maps [0, 1] onto one period of the lowest frequency).

    Returns:
        [..., num_feats]: channel ``2i`` is ``sin(scale * x / T^(2i/F))``, channel ``2i+1`` the cosine
        at the same frequency.
    """
    if num_feats % 2:
        raise ValueError(f"num_feats must be even, got {num_feats}")
    exponent = torch.arange(num_feats // 2, dtype=torch.float32, device=coords.device) * 2 / num_feats
    inv_freq = temperature ** (-exponent)
    angles = coords.float()[..., None] * scale * inv_freq  # [..., F/2]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2).to(coords.dtype)


def box_sine_embedding(
    boxes: torch.Tensor, num_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi
) -> torch.Tensor:
    """Sine embedding of points or boxes, coordinate by coordinate.

    Args:
        boxes: [..., D] normalised coordinates, e.g. D=4 for ``(cx, cy, w, h)`` anchors, D=2 for points.

    Returns:
        [..., D * num_feats]: the embeddings of each coordinate, concatenated in input order.
    """
    return sine_embedding(boxes, num_feats, temperature, scale).flatten(-2)


class PositionEmbeddingSine(nn.Module):
    """2-D sine embedding of the valid (unpadded) region of a feature map.

    Pixel centres are numbered within the valid region and normalised by its size, so an image's
    embedding does not depend on how much the batch padded it.

    Args:
        embed_dim: output channels (even): ``embed_dim / 2`` for y, then as many for x.
        temperature: wavelength base (10000 in DETR/Deformable DETR, 20 in DINO).
        normalize: normalise coordinates to [0, 1] before scaling (True for every model here).
        scale: angle scale applied to normalised coordinates.
        offset: added to the 1-based pixel index before normalising; -0.5 puts pixel centres at
            ``(i + 0.5) / size``.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        offset: float = -0.5,
    ):
        super().__init__()
        if embed_dim % 4:
            raise ValueError(f"embed_dim must be a multiple of 4, got {embed_dim}")
        self.embed_dim = embed_dim
        self.num_feats = embed_dim // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.offset = offset

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """mask: [B, H, W] bool, True on padded pixels -> [B, embed_dim, H, W]."""
        not_mask = (~mask).float()
        y = not_mask.cumsum(1)
        x = not_mask.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y = (y + self.offset) / (y[:, -1:, :] + eps)
            x = (x + self.offset) / (x[:, :, -1:] + eps)
            scale = self.scale
        else:
            scale = 1.0
        pos_y = sine_embedding(y, self.num_feats, self.temperature, scale)
        pos_x = sine_embedding(x, self.num_feats, self.temperature, scale)
        return torch.cat([pos_y, pos_x], dim=-1).permute(0, 3, 1, 2).contiguous()
