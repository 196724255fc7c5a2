"""Box conversions and overlaps for DETR-style models.

Boxes are ``(cx, cy, w, h)`` or ``(x0, y0, x1, y1)`` in the last dimension; every function
broadcasts over leading dimensions, so the same code serves one image, a batch, or a stack of
decoder layers.
"""
import torch


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] centre/size boxes -> [..., 4] corner boxes."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] corner boxes -> [..., 4] centre/size boxes."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``log(x / (1 - x))`` with both terms clamped to ``eps``, so 0 and 1 map to finite logits."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def pairwise_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor):
    """IoU between every pair of corner boxes.

    Args:
        boxes1: [..., N, 4] xyxy.
        boxes2: [..., M, 4] xyxy (leading dimensions broadcast with ``boxes1``'s).

    Returns:
        ``(iou, union)``, both [..., N, M].
    """
    area1 = _area(boxes1)[..., :, None]
    area2 = _area(boxes2)[..., None, :]
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    return inter / union.clamp(min=1e-12), union


def pairwise_generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Generalized IoU (Rezatofighi et al. 2019) between every pair: [..., N, 4] x [..., M, 4] -> [..., N, M].

    Boxes are xyxy; degenerate boxes give finite values (unions and hulls are clamped away
    from zero).
    """
    iou, union = pairwise_box_iou(boxes1, boxes2)
    lt = torch.minimum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.maximum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = (wh[..., 0] * wh[..., 1]).clamp(min=1e-12)
    return iou - (hull - union) / hull


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of matching pairs: [..., 4] and [..., 4] xyxy -> [...]."""
    area1, area2 = _area(boxes1), _area(boxes2)
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = (area1 + area2 - inter).clamp(min=1e-12)
    hull_wh = (torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
               - torch.minimum(boxes1[..., :2], boxes2[..., :2])).clamp(min=0)
    hull = (hull_wh[..., 0] * hull_wh[..., 1]).clamp(min=1e-12)
    return inter / union - (hull - union) / hull
