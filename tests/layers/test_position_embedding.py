"""Sine position embeddings: values, padding invariance, box embeddings."""
import math

import torch

from d2kd.layers import PositionEmbeddingSine, box_sine_embedding, sine_embedding


def test_sine_embedding_values():
    x = torch.tensor([0.25])
    emb = sine_embedding(x, num_feats=4, temperature=100.0)
    angle0 = 0.25 * 2 * math.pi
    angle1 = angle0 / 100 ** 0.5
    expected = torch.tensor([[math.sin(angle0), math.cos(angle0), math.sin(angle1), math.cos(angle1)]])
    assert torch.allclose(emb, expected, atol=1e-6)


def test_box_embedding_concatenates_coordinates():
    boxes = torch.rand(2, 3, 4)
    emb = box_sine_embedding(boxes, num_feats=8)
    assert emb.shape == (2, 3, 32)
    assert torch.allclose(emb[..., 8:16], sine_embedding(boxes[..., 1], 8))


def test_map_embedding_ignores_padding():
    pe = PositionEmbeddingSine(embed_dim=16)
    mask = torch.zeros(2, 6, 8, dtype=torch.bool)
    mask[1, :, 5:] = True  # image 1: 6x5 valid in an 6x8 batch
    mask[1, 4:, :] = True
    out = pe(mask)
    assert out.shape == (2, 16, 6, 8)
    alone = pe(torch.zeros(1, 4, 5, dtype=torch.bool))
    assert torch.allclose(out[1, :, :4, :5], alone[0], atol=1e-6)
