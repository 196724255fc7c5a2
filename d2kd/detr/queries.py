"""The data a DETR model passes between its steps, and the query-group attention mask.

A decoder pass decodes several *query groups* at once: the detection queries ("det"), DINO's
denoising queries ("dn"), and any group a distillation method injects (KD-DETR's distillation
points, DETRDistill's teacher queries). Groups share the decoder's weights and the encoder
memory; the self-attention mask (:func:`group_attention_mask`) keeps them apart, so adding a
group never changes another group's outputs, unless the latter lists it in ``sees``.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor


@dataclass
class QueryGroup:
    """Queries decoded together, and what they may attend to.

    Attributes:
        name: key of the group's :class:`DecodedGroup` in the decoder's result (unique per pass).
        content: [B, N, C] initial content ("target") embeddings.
        anchor_logits: [B, N, 4] initial reference boxes as ``inverse_sigmoid(cxcywh)``, normalised
            to the unpadded image. The decoder derives the positional queries from them, unless
            ``position`` is given.
        internal_mask: [N, N] bool, True where query i may NOT attend to query j of the same
            group (e.g. DINO's denoising sub-groups). A query always sees itself.
        sees: names of other groups whose queries this group's queries may attend to.
        position: [B, N, C] positional queries, for models whose positional queries are not a
            function of the anchors (Deformable DETR as published); None: derived by the model
            (:meth:`d2kd.detr.DETRBase.anchor_positions`).
    """

    name: str
    content: Tensor
    anchor_logits: Tensor
    internal_mask: Optional[Tensor] = None
    sees: Tuple[str, ...] = ()
    position: Optional[Tensor] = None

    def __len__(self) -> int:
        return self.content.shape[1]


@dataclass
class DecodedGroup:
    """Per-decoder-layer outputs of one query group (D decoder layers).

    Attributes:
        logits: [D, B, N, K] class logits (sigmoid / focal convention, no background class).
        boxes: [D, B, N, 4] predicted boxes, normalised cxcywh.
        hidden: [D, B, N, C] decoder output embeddings (after the decoder's final norm, if any).
        references: [D, B, N, 4] reference boxes (cxcywh) each layer started from; layer 0's are
            the group's anchors.
    """

    logits: Tensor
    boxes: Tensor
    hidden: Tensor
    references: Tensor

    def layer(self, index: int = -1) -> Dict[str, Tensor]:
        """One layer's ``{"logits": [B,N,K], "boxes": [B,N,4], "hidden": [B,N,C]}``."""
        return {"logits": self.logits[index], "boxes": self.boxes[index], "hidden": self.hidden[index]}


@dataclass
class EncoderState:
    """The encoder's input and output.

    Attributes:
        features: encoder input per level, [B, C, H_l, W_l] (after the channel mapper, before
            position and level embeddings).
        memory: [B, S, C] encoder output, levels flattened in order (``S = sum_l H_l W_l``).
        padding_mask: [B, S] bool, True on padded pixels.
        spatial_shapes: [L, 2] int64 (H_l, W_l).
        level_start_index: [L] int64.
        valid_ratios: [B, L, 2] (w, h) fraction of each level that is not padding.
        image_sizes: unpadded (h, w) of each image, in pixels of the network input.
        pos_embed: [B, S, C] position + level embeddings the encoder added to its queries.
    """

    features: List[Tensor]
    memory: Tensor
    padding_mask: Tensor
    spatial_shapes: Tensor
    level_start_index: Tensor
    valid_ratios: Tensor
    image_sizes: List[Tuple[int, int]]
    pos_embed: Optional[Tensor] = None

    def split_levels(self, tokens: Tensor) -> List[Tensor]:
        """[B, S, C] flattened tokens -> list of [B, C, H_l, W_l]."""
        B, _, C = tokens.shape
        sizes = [int(h) * int(w) for h, w in self.spatial_shapes.tolist()]
        return [
            t.transpose(1, 2).reshape(B, C, int(h), int(w))
            for t, (h, w) in zip(tokens.split(sizes, dim=1), self.spatial_shapes.tolist())
        ]

    def memory_levels(self) -> List[Tensor]:
        """The memory as [B, C, H_l, W_l] per level."""
        return self.split_levels(self.memory)

    def level_padding_masks(self) -> List[Tensor]:
        """The padding mask as [B, H_l, W_l] per level."""
        return [m[:, 0] for m in self.split_levels(self.padding_mask[..., None])]


@dataclass
class EncoderProposals:
    """Two-stage encoder proposals (Deformable DETR two-stage, DINO query selection).

    Every encoder token predicts a class and a box relative to a grid proposal; the top-k tokens
    by best class score become the decoder's anchors. Attributes (K selected, S tokens):

        logits: [B, K, num_classes] class logits of the selected tokens.
        boxes: [B, K, 4] their boxes (cxcywh), *not* detached: the proposal losses train them.
        indices: [B, K] int64 positions of the selected tokens in S.
        embeddings: [B, K, C] the selected tokens after the proposal projection.
        all_logits: [B, S, num_classes] and all_boxes: [B, S, 4]: every token's prediction.
        valid: [B, S] bool, tokens that may be proposals (unpadded, not at the border).
    """

    logits: Tensor
    boxes: Tensor
    indices: Tensor
    embeddings: Tensor
    all_logits: Tensor
    all_boxes: Tensor
    valid: Tensor


@dataclass
class DETRRecord:
    """Everything a forward pass leaves behind, for the losses and for distillation.

    Attributes:
        enc: the encoder's input features and memory (:class:`EncoderState`), e.g. for
            feature-level distillation (``enc.features``, ``enc.memory_levels()``).
        queries: the detection queries as fed to the decoder: learned or selected content
            ``[B, N, C]`` and anchors ``[B, N, 4]`` (:class:`QueryGroup` named "det").
        outputs: per-layer class logits, boxes, hidden states and references of the detection
            queries (:class:`DecodedGroup`, shapes [D, B, N, ...]).
        proposals: two-stage encoder proposals (:class:`EncoderProposals`), None for one-stage.
        groups: every other group decoded in the same pass, by name: "dn" (denoising queries,
            training only) and the extra groups of a distillation method.
        dn_meta: how the "dn" group is laid out (see :mod:`d2kd.detr.denoising`), or None.
        matching: last-layer Hungarian matching of the detection queries, one
            ``(query_idx [M_b], gt_idx [M_b])`` pair per image; set by ``compute_losses`` (or
            ``match``), None before.
    """

    enc: EncoderState
    queries: QueryGroup
    outputs: DecodedGroup
    proposals: Optional[EncoderProposals] = None
    groups: Dict[str, DecodedGroup] = field(default_factory=dict)
    dn_meta: Optional[dict] = None
    matching: Optional[List[Tuple[Tensor, Tensor]]] = None


def group_attention_mask(groups: Sequence[QueryGroup], device=None) -> Optional[Tensor]:
    """The decoder self-attention mask for groups decoded together, in their order.

    Query i of group g may attend to query j of group h iff ``g is h`` and
    ``internal_mask[i, j]`` is False (or absent), or ``h.name in g.sees``. Every query sees
    itself, so no row is fully masked.

    Returns:
        [N_total, N_total] bool, True = may not attend; None when nothing is masked (one group
        without an internal mask), which lets attention take its fast path.
    """
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ValueError(f"query group names must be unique, got {names}")
    for g in groups:
        unknown = set(g.sees) - set(names)
        if unknown:
            raise ValueError(f"group {g.name!r} sees unknown groups {sorted(unknown)}")
    if len(groups) == 1 and groups[0].internal_mask is None:
        return None
    sizes = [len(g) for g in groups]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    total = sum(sizes)
    mask = torch.ones(total, total, dtype=torch.bool, device=device)
    index = {g.name: i for i, g in enumerate(groups)}
    for i, g in enumerate(groups):
        rows = slice(starts[i], starts[i] + sizes[i])
        block = torch.zeros(sizes[i], sizes[i], dtype=torch.bool, device=device)
        if g.internal_mask is not None:
            if tuple(g.internal_mask.shape) != (sizes[i], sizes[i]):
                raise ValueError(f"internal_mask of {g.name!r} must be [{sizes[i]}, {sizes[i]}]")
            block = g.internal_mask.to(device=device, dtype=torch.bool).clone()
            block.fill_diagonal_(False)
        mask[rows, rows] = block
        for other in g.sees:
            j = index[other]
            mask[rows, starts[j]:starts[j] + sizes[j]] = False
    return mask


def independent_sets(groups: Sequence[QueryGroup]) -> List[List[int]]:
    """The groups split into sets that see nothing of each other (connected components of the
    ``sees`` relation, in either direction), as lists of indices in their original order, sets
    ordered by their first group. Decoding each set in its own pass gives the same outputs as one
    masked pass over all groups, at a self-attention cost of ``sum |set|^2`` instead of ``N^2``.
    """
    index = {g.name: i for i, g in enumerate(groups)}
    if len(index) != len(groups):
        raise ValueError(f"query group names must be unique, got {[g.name for g in groups]}")
    parent = list(range(len(groups)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, g in enumerate(groups):
        for other in g.sees:
            if other not in index:
                raise ValueError(f"group {g.name!r} sees unknown groups {[other]}")
            parent[root(index[other])] = root(i)
    sets: Dict[int, List[int]] = {}
    for i in range(len(groups)):
        sets.setdefault(root(i), []).append(i)
    return sorted(sets.values(), key=lambda members: members[0])
