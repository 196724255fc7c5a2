"""What every d2kd DETR model shares: the step-wise API of docs/DESIGN.md.

A forward pass is split into steps a distillation method can call and interleave:

    images  = model.preprocess_image(batched_inputs)
    targets = model.prepare_targets(batched_inputs)
    record  = model.run(images, targets, extra_groups=...)    # encode, queries, decode
    losses  = model.compute_losses(record, targets)           # also sets record.matching
    results = model.inference(record, images, batched_inputs)

``run`` = ``encode`` -> ``make_detection_queries`` -> ``make_denoising_queries`` (training
only) -> the extra groups -> one ``decode`` of all groups. Subclasses define how the detection
queries are made (:meth:`DETRBase.make_detection_queries`); everything else is here.
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from d2kd.layers import PositionEmbeddingSine, box_cxcywh_to_xyxy, box_xyxy_to_cxcywh

from .backbone import ChannelMapper
from .criterion import LOSS_TERMS, SetCriterion, zero_losses
from .denoising import ContrastiveDenoising
from .queries import (DecodedGroup, DETRRecord, EncoderProposals, EncoderState, QueryGroup, group_attention_mask,
                      independent_sets)
from .transformer import DeformableDecoder, DeformableEncoder

ExtraGroups = Callable[[EncoderState, QueryGroup], Sequence[QueryGroup]]
DETECTION = "det"


class DETRBase(nn.Module):
    """Backbone, deformable encoder/decoder, losses and inference of a DETR-family detector.

    Args:
        backbone: multi-scale backbone returning ``num_feature_levels`` maps of ``embed_dim``
            channels (:class:`~d2kd.detr.backbone.ChannelMapper`).
        position_embedding: sine embedding of each level's valid region (``embed_dim`` channels).
        encoder, decoder: the deformable transformer.
        criterion: matcher and losses.
        num_classes: K.
        num_queries: detection queries N.
        embed_dim: transformer width C.
        num_feature_levels: L.
        denoising: the denoising-query builder, or None (no denoising).
        pixel_mean, pixel_std: per-channel normalisation, in the input's channel order.
        size_divisibility: images are padded to a multiple of this.
        select_topk: detections kept per image at inference (top-k query-class pairs).
        level_embed: add a learned embedding per feature level to the position embeddings
            (multi-scale models); False for single-scale ones (DAB-DETR).
    """

    def __init__(
        self,
        *,
        backbone: ChannelMapper,
        position_embedding: PositionEmbeddingSine,
        encoder: DeformableEncoder,
        decoder: DeformableDecoder,
        criterion: SetCriterion,
        num_classes: int,
        num_queries: int,
        embed_dim: int = 256,
        num_feature_levels: int = 4,
        denoising: Optional[ContrastiveDenoising] = None,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        size_divisibility: int = 32,
        select_topk: int = 100,
        level_embed: bool = True,
    ):
        super().__init__()
        checks = {
            "backbone.out_channels": (backbone.out_channels, embed_dim),
            "position_embedding channels": (position_embedding.embed_dim, embed_dim),
            "encoder.embed_dim": (encoder.embed_dim, embed_dim),
            "decoder.embed_dim": (decoder.embed_dim, embed_dim),
            "backbone levels": (backbone.num_levels, num_feature_levels),
            "encoder.num_levels": (encoder.num_levels, num_feature_levels),
            "decoder.num_levels": (decoder.num_levels, num_feature_levels),
            "decoder.num_classes": (decoder.num_classes, num_classes),
            "criterion.num_classes": (criterion.num_classes, num_classes),
        }
        if denoising is not None:
            checks["denoising.num_classes"] = (denoising.num_classes, num_classes)
            checks["denoising width"] = (denoising.label_embed.embedding_dim, embed_dim)
        wrong = [f"{k}={got} (expected {want})" for k, (got, want) in checks.items() if got != want]
        if wrong:
            raise ValueError("inconsistent DETR configuration: " + ", ".join(wrong))
        self.backbone = backbone
        self.position_embedding = position_embedding
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, embed_dim)) if level_embed else None
        if level_embed:
            nn.init.normal_(self.level_embed)
        self.encoder = encoder
        self.decoder = decoder
        self.criterion = criterion
        self.denoising = denoising
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.embed_dim = embed_dim
        self.num_feature_levels = num_feature_levels
        self.size_divisibility = size_divisibility
        self.select_topk = select_topk
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ---------------------------------------------------------------- inputs
    def preprocess_image(self, batched_inputs) -> ImageList:
        """Normalised images padded into one tensor [B, 3, H, W] (detectron2 ``ImageList``)."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def prepare_targets(self, batched_inputs) -> List[Dict[str, torch.Tensor]]:
        """Per image ``{"labels": [M] int64, "boxes": [M, 4]}``, boxes as cxcywh normalised by the
        unpadded network-input size."""
        targets = []
        for x in batched_inputs:
            inst = x["instances"].to(self.device)
            h, w = inst.image_size
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            boxes = box_xyxy_to_cxcywh(inst.gt_boxes.tensor.float() / scale)
            targets.append({"labels": inst.gt_classes.long(), "boxes": boxes})
        return targets

    # ---------------------------------------------------------------- steps
    def encode(self, images: ImageList) -> EncoderState:
        """Backbone, channel mapper and deformable encoder."""
        x = images.tensor
        B, _, H, W = x.shape
        pad = torch.ones(B, H, W, dtype=torch.bool, device=x.device)
        for b, (h, w) in enumerate(images.image_sizes):
            pad[b, :h, :w] = False
        features = self.backbone(x)
        src, pos, masks, ratios, shapes = [], [], [], [], []
        for lvl, feat in enumerate(features):
            h, w = feat.shape[-2:]
            mask = F.interpolate(pad[None].float(), size=(h, w))[0].bool()
            pos_l = self.position_embedding(mask).to(feat.dtype)
            if self.level_embed is not None:
                pos_l = pos_l + self.level_embed[lvl].view(1, -1, 1, 1)
            src.append(feat.flatten(2).transpose(1, 2))
            pos.append(pos_l.flatten(2).transpose(1, 2))
            masks.append(mask.flatten(1))
            # at least one valid row/column, so tiny images in a big batch cannot divide by zero
            valid_h = (~mask[:, :, 0]).sum(1).clamp(min=1)
            valid_w = (~mask[:, 0, :]).sum(1).clamp(min=1)
            ratios.append(torch.stack([valid_w / w, valid_h / h], dim=-1).to(feat.dtype))
            shapes.append((h, w))
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=x.device)
        level_start_index = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
        src, pos, padding_mask = torch.cat(src, 1), torch.cat(pos, 1), torch.cat(masks, 1)
        valid_ratios = torch.stack(ratios, 1)
        memory = self.encoder(src, pos, spatial_shapes, level_start_index, valid_ratios, padding_mask)
        return EncoderState(
            features=list(features),
            memory=memory,
            padding_mask=padding_mask,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            valid_ratios=valid_ratios,
            image_sizes=list(images.image_sizes),
            pos_embed=pos,
        )

    def make_detection_queries(self, enc: EncoderState) -> Tuple[QueryGroup, Optional[EncoderProposals]]:
        """The detection query group (named "det") and the encoder proposals, if two-stage."""
        raise NotImplementedError

    def make_denoising_queries(self, targets, det: QueryGroup) -> Optional[Tuple[QueryGroup, dict]]:
        """The denoising group and its layout (see :mod:`d2kd.detr.denoising`), or None."""
        if self.denoising is None:
            return None
        return self.denoising(targets)

    def decode(self, enc: EncoderState, groups: Sequence[QueryGroup]) -> Dict[str, DecodedGroup]:
        """Decodes the groups: one decoder pass per set of groups that see each other
        (:func:`independent_sets`; e.g. detection + denoising, and each distillation group on its
        own), each set isolated inside by :func:`group_attention_mask`. Same outputs as one masked
        pass over all groups, without its self-attention cost (quadratic in the total count)
        and with the unmasked fast attention path for a set of one plain group."""
        groups = list(groups)
        decoded: Dict[str, DecodedGroup] = {}
        for members in independent_sets(groups):
            decoded.update(self._decode_together(enc, [groups[i] for i in members]))
        return {g.name: decoded[g.name] for g in groups}

    def _decode_together(self, enc: EncoderState, groups: List[QueryGroup]) -> Dict[str, DecodedGroup]:
        """One decoder pass over ``groups``, isolated by :func:`group_attention_mask`."""
        mask = group_attention_mask(groups, enc.memory.device)
        content = torch.cat([g.content for g in groups], dim=1)
        anchors = torch.cat([g.anchor_logits for g in groups], dim=1)
        outs = self.run_decoder(enc, content, anchors, mask, self.group_positions(groups))
        sizes = [len(g) for g in groups]
        pieces = [o.split(sizes, dim=2) for o in outs]
        return {g.name: DecodedGroup(*(p[i] for p in pieces)) for i, g in enumerate(groups)}

    def run_decoder(self, enc: EncoderState, content, anchor_logits, self_attn_mask, query_pos):
        """One decoder call on the concatenated groups; returns its 4 stacks [D, B, N, ...]."""
        return self.decoder(content, anchor_logits, enc.memory, enc.spatial_shapes, enc.level_start_index,
                            enc.valid_ratios, enc.padding_mask, self_attn_mask, query_pos)

    def group_positions(self, groups: Sequence[QueryGroup]) -> Optional[torch.Tensor]:
        """The positional queries [B, N_total, C] of groups decoded together, or None to let the
        decoder derive them from the anchors (no group brings its own)."""
        if all(g.position is None for g in groups):
            return None
        return torch.cat([g.position if g.position is not None else self.anchor_positions(g.anchor_logits)
                          for g in groups], dim=1)

    def anchor_positions(self, anchor_logits: torch.Tensor) -> torch.Tensor:
        """Positional queries [B, N, C] of a group that brings none, from its anchors [B, N, 4]
        (used when another group of the same pass has explicit positions)."""
        return self.decoder.positional_queries(anchor_logits.sigmoid())

    def proposal_targets(self, targets):
        """The targets of the two-stage proposal losses (the detection targets by default)."""
        return targets

    def run(self, images: ImageList, targets=None, extra_groups: Optional[ExtraGroups] = None) -> DETRRecord:
        """Encodes, builds the query groups and decodes them together.

        Args:
            images: preprocessed images.
            targets: ground truth (``prepare_targets``); in training mode it adds the denoising
                group. Not used otherwise.
            extra_groups: ``(enc, det_queries) -> [QueryGroup, ...]``, decoded in the same pass.
        """
        enc = self.encode(images)
        det, proposals = self.make_detection_queries(enc)
        groups = [det]
        dn_meta = None
        if self.training and targets is not None:
            dn = self.make_denoising_queries(targets, det)
            if dn is not None:
                groups.append(dn[0])
                dn_meta = dn[1]
        if extra_groups is not None:
            groups.extend(extra_groups(enc, det))
        decoded = self.decode(enc, groups)
        outputs = decoded.pop(det.name)
        return DETRRecord(enc=enc, queries=det, outputs=outputs, proposals=proposals, groups=decoded,
                          dn_meta=dn_meta)

    # ---------------------------------------------------------------- losses
    def match(self, record: DETRRecord, targets) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Last-layer Hungarian matching of the detection queries (also stored in the record)."""
        record.matching = self.criterion.matcher(record.outputs.logits[-1], record.outputs.boxes[-1], targets)
        return record.matching

    def compute_losses(self, record: DETRRecord, targets) -> Dict[str, torch.Tensor]:
        """Detection losses of every decoder layer, of the encoder proposals (two-stage) and of the
        denoising queries; sets ``record.matching``. Values are weighted (see criterion)."""
        num_boxes = self.criterion.num_boxes(targets, self.device)
        out = record.outputs
        losses, indices = self.criterion(out.logits, out.boxes, targets, num_boxes=num_boxes)
        record.matching = indices[-1]
        if record.proposals is not None:
            p = record.proposals
            enc_targets = self.proposal_targets(targets)
            enc_losses, _ = self.criterion(p.logits[None], p.boxes[None], enc_targets, "_enc", num_boxes)
            losses.update(enc_losses)
        if self.denoising is not None:
            losses.update(self.denoising_losses(record, targets, num_boxes))
        return losses

    def denoising_losses(self, record: DETRRecord, targets, num_boxes) -> Dict[str, torch.Tensor]:
        """Losses of the denoising group; zeros (same keys) when the batch had no object."""
        name = self.denoising.name
        if record.dn_meta is None or name not in record.groups:
            names = [f"{t}_dn" for t in LOSS_TERMS]
            names += [f"{t}_dn_{d}" for t in LOSS_TERMS for d in range(self.decoder.num_layers - 1)]
            return zero_losses(self.denoising.label_embed.weight, names)
        dn = record.groups[name]
        indices = [record.dn_meta["indices"]] * dn.logits.shape[0]
        scaled = num_boxes * record.dn_meta["num_groups"]
        losses = self.criterion.stack_losses(dn.logits, dn.boxes, targets, indices, scaled)
        return self.criterion.name_layers(losses, "_dn")

    # ---------------------------------------------------------------- outputs
    def inference(self, record: DETRRecord, images: ImageList, batched_inputs) -> List[Dict[str, Instances]]:
        """Top-k query-class pairs by sigmoid score, boxes in original-image pixels.

        Returns:
            one ``{"instances": Instances}`` per image (``pred_boxes``, ``scores``,
            ``pred_classes``), rescaled to the input's ``height``/``width`` when given.
        """
        logits, boxes = record.outputs.logits[-1], record.outputs.boxes[-1]
        B, N, K = logits.shape
        scores, index = logits.sigmoid().flatten(1).topk(min(self.select_topk, N * K), dim=1)
        query, labels = index // K, index % K
        boxes = box_cxcywh_to_xyxy(boxes.gather(1, query[..., None].expand(-1, -1, 4)))
        results = []
        for b, (h, w) in enumerate(images.image_sizes):
            inst = Instances((h, w))
            inst.pred_boxes = Boxes(boxes[b] * torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device))
            inst.scores = scores[b]
            inst.pred_classes = labels[b]
            height = batched_inputs[b].get("height", h)
            width = batched_inputs[b].get("width", w)
            results.append({"instances": detector_postprocess(inst, height, width)})
        return results

    def forward(self, batched_inputs):
        """detectron2 contract: a dict of losses in training, a list of results in eval."""
        images = self.preprocess_image(batched_inputs)
        if self.training:
            targets = self.prepare_targets(batched_inputs)
            record = self.run(images, targets)
            return self.compute_losses(record, targets)
        return self.inference(self.run(images), images, batched_inputs)
