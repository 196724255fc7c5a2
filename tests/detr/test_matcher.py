"""Hungarian matcher: the optimum of a brute-force search over all assignments, batched."""
import itertools

import pytest
import torch

from d2kd.detr import HungarianMatcher
from d2kd.layers import box_cxcywh_to_xyxy, focal_class_cost, pairwise_generalized_box_iou


def _targets(num, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for m in num:
        centre = torch.rand(m, 2, generator=g) * 0.6 + 0.2
        size = torch.rand(m, 2, generator=g) * 0.3 + 0.05
        out.append({"labels": torch.randint(0, K, (m,), generator=g), "boxes": torch.cat([centre, size], 1)})
    return out


def _brute_force(cost):
    """Minimum total cost over every injective assignment of columns to rows (N >= M)."""
    N, M = cost.shape
    if M == 0:
        return 0.0
    return min(sum(cost[r, c].item() for c, r in enumerate(rows)) for rows in itertools.permutations(range(N), M))


@pytest.mark.parametrize("num", [[3, 0, 5], [0, 0], [6, 1]])
def test_matches_brute_force(num):
    N, K = 6, 4
    torch.manual_seed(sum(num))
    logits = torch.randn(len(num), N, K)
    boxes = torch.cat([torch.rand(len(num), N, 2) * 0.6 + 0.2, torch.rand(len(num), N, 2) * 0.3 + 0.05], -1)
    targets = _targets(num, K)
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0)
    indices = matcher(logits, boxes, targets)
    for b, (rows, cols) in enumerate(indices):
        t = targets[b]
        # the cost matrix written out pair by pair
        cost = (
            2.0 * focal_class_cost(logits[b], t["labels"])
            + 5.0 * torch.cdist(boxes[b], t["boxes"], p=1)
            - 2.0 * pairwise_generalized_box_iou(box_cxcywh_to_xyxy(boxes[b]), box_cxcywh_to_xyxy(t["boxes"]))
        )
        assert len(rows) == len(cols) == num[b]
        assert sorted(cols.tolist()) == list(range(num[b]))  # every object matched once
        assert len(set(rows.tolist())) == num[b]
        total = sum(cost[r, c].item() for r, c in zip(rows.tolist(), cols.tolist()))
        assert total == pytest.approx(_brute_force(cost), abs=1e-4)


def test_stack_equals_layer_by_layer():
    D, B, N, K = 3, 2, 5, 4
    torch.manual_seed(0)
    logits = torch.randn(D, B, N, K)
    boxes = torch.rand(D, B, N, 4) * 0.5 + 0.1
    targets = _targets([2, 4], K)
    matcher = HungarianMatcher()
    stacked = matcher.match_stack(logits, boxes, targets)
    for d in range(D):
        for (r1, c1), (r2, c2) in zip(stacked[d], matcher(logits[d], boxes[d], targets)):
            assert torch.equal(r1, r2) and torch.equal(c1, c2)


def test_more_objects_than_queries():
    targets = _targets([5], 4)
    rows, cols = HungarianMatcher()(torch.randn(1, 3, 4), torch.rand(1, 3, 4) * 0.5 + 0.1, targets)[0]
    assert len(rows) == 3 and len(set(cols.tolist())) == 3
