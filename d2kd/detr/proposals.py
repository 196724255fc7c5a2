"""Two-stage encoder proposals: every encoder token proposes a box, the best become anchors.

Used by Deformable DETR's two-stage variant and by DINO's (mixed) query selection. Each valid
token at level l gets a grid proposal centred on it with size ``base_scale * 2^l`` (of the
valid image); a projection of its memory predicts class logits and a box delta relative to the
proposal (in logit space). The top-k tokens by best class score are selected.
"""
import torch
from torch import nn

from d2kd.layers import MLP, prior_bias

from .queries import EncoderProposals, EncoderState


def grid_proposals(enc: EncoderState, base_scale: float = 0.05, margin: float = 0.01):
    """One box per encoder token, centred on its pixel.

    Returns:
        ``(logits [B, S, 4], valid [B, S])``: ``inverse_sigmoid`` of the cxcywh proposals
        (normalised to the valid image), and whether a token may propose (not padding, box
        coordinates inside ``(margin, 1 - margin)``). Invalid tokens get logits 0.
    """
    B = enc.memory.shape[0]
    proposals = []
    for lvl, (h, w) in enumerate(enc.spatial_shapes.tolist()):
        ratios = enc.valid_ratios[:, lvl]  # [B, 2] (w, h)
        ys = torch.arange(h, dtype=ratios.dtype, device=ratios.device) + 0.5
        xs = torch.arange(w, dtype=ratios.dtype, device=ratios.device) + 0.5
        cy = ys[None, :, None] / (ratios[:, 1, None, None] * h)  # [B, H_l, 1]
        cx = xs[None, None, :] / (ratios[:, 0, None, None] * w)  # [B, 1, W_l]
        cx, cy = torch.broadcast_tensors(cx, cy)
        size = torch.full_like(cx, base_scale * 2.0 ** lvl)
        proposals.append(torch.stack([cx, cy, size, size], dim=-1).reshape(B, h * w, 4))
    boxes = torch.cat(proposals, dim=1)
    valid = ((boxes > margin) & (boxes < 1 - margin)).all(-1) & ~enc.padding_mask
    logits = torch.log(boxes / (1 - boxes)).masked_fill(~valid[..., None], 0.0)
    return logits, valid


class ProposalHead(nn.Module):
    """Scores the encoder tokens as proposals and selects the top k.

    Args:
        embed_dim: transformer width C.
        num_classes: K (the proposal classifier predicts every class, sigmoid convention).
        base_scale: proposal size at the finest level (doubles per level).
        prior_prob: initial foreground probability of the classifier.
        class_agnostic: rank the tokens by their first class logit, an objectness score (Deformable
            DETR's two-stage code, which trains the proposals with every label set to 0); else by
            their best class (DINO).
    """

    def __init__(self, embed_dim: int = 256, num_classes: int = 80, base_scale: float = 0.05,
                 prior_prob: float = 0.01, class_agnostic: bool = False):
        super().__init__()
        self.base_scale = base_scale
        self.class_agnostic = class_agnostic
        self.memory_proj = nn.Linear(embed_dim, embed_dim)
        self.memory_norm = nn.LayerNorm(embed_dim)
        self.class_head = nn.Linear(embed_dim, num_classes)
        self.box_head = MLP(embed_dim, embed_dim, 4, 3)
        nn.init.constant_(self.class_head.bias, prior_bias(prior_prob))
        nn.init.zeros_(self.box_head.layers[-1].weight)
        nn.init.zeros_(self.box_head.layers[-1].bias)

    def forward(self, enc: EncoderState, num_select: int) -> EncoderProposals:
        """Selects ``num_select`` proposals per image.

        When an image has fewer than ``num_select`` tokens (tiny inputs), the ranked tokens are
        repeated cyclically so that the number of queries stays fixed.
        """
        proposal_logits, valid = grid_proposals(enc, self.base_scale)
        memory = enc.memory.masked_fill(~valid[..., None], 0.0)
        embeddings = self.memory_norm(self.memory_proj(memory))
        all_logits = self.class_head(embeddings)
        all_box_logits = self.box_head(embeddings) + proposal_logits
        S = all_logits.shape[1]
        scores = all_logits.detach()[..., 0] if self.class_agnostic else all_logits.detach().max(-1).values
        scores = scores.masked_fill(~valid, float("-inf"))
        indices = scores.topk(min(num_select, S), dim=1).indices
        if num_select > S:
            indices = indices[:, torch.arange(num_select, device=indices.device) % S]

        def take(x):
            return x.gather(1, indices[..., None].expand(-1, -1, x.shape[-1]))

        return EncoderProposals(
            logits=take(all_logits),
            boxes=take(all_box_logits).sigmoid(),
            indices=indices,
            embeddings=take(embeddings),
            all_logits=all_logits,
            all_boxes=all_box_logits.sigmoid(),
            valid=valid,
        )
