"""FitNet: value by hand, padding excluded, levels paired by stride."""
from types import SimpleNamespace

import pytest
import torch

from d2kd.distill.base import DistillStep
from d2kd.distill.fitnet import FitNet
from d2kd.distill.levels import pair_levels


def _view(features, strides, image_sizes, family="rcnn"):
    return SimpleNamespace(family=family, features=features, strides=strides, record=None,
                           images=SimpleNamespace(image_sizes=image_sizes))


def _step(teacher, student):
    return DistillStep(batched_inputs=[], targets=[], teacher=teacher, student=student)


def _set_adapter(fitnet, level, weight, bias=0.0):
    conv = fitnet.adapters[level]
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weight, dtype=torch.float32).view_as(conv.weight))
        conv.bias.fill_(bias)


def test_value_by_hand_and_padding_excluded():
    # one stride-8 level, 2x2 cells; the image is 16 x 8 px: column 1 is padding
    t = torch.tensor([[[[1.0, 9.0], [2.0, 9.0]], [[0.0, 9.0], [1.0, 9.0]]]])  # [1, 2, 2, 2]
    s = torch.tensor([[[[2.0, 5.0], [0.0, 5.0]]]])  # [1, 1, 2, 2]
    fitnet = FitNet(student_channels=1, teacher_channels=2, num_levels=1, weight=3.0)
    _set_adapter(fitnet, 0, [1.0, 2.0])  # phi(s) = (s, 2 s)
    step = _step(_view([t], [8], [(16, 8)]), _view([s], [8], [(16, 8)]))
    loss = fitnet(step)["loss_kd_fitnet"]
    # valid cells (0, 0), (1, 0): channel 0: (2-1)^2 + (0-2)^2 = 5; channel 1: (4-0)^2 + (0-1)^2 = 17
    assert loss.item() == pytest.approx(3.0 * (5 + 17) / (2 * 2))
    s2 = s.clone()
    s2[..., 1] = -100.0  # change only the padded column
    t2 = t.clone()
    t2[..., 1] = 100.0
    step = _step(_view([t2], [8], [(16, 8)]), _view([s2], [8], [(16, 8)]))
    assert fitnet(step)["loss_kd_fitnet"].item() == pytest.approx(loss.item())


def test_levels_paired_by_stride():
    assert pair_levels([8, 16, 32], [16, 32, 64]) == [(1, 0), (2, 1)]
    with pytest.raises(ValueError, match="no level in common"):
        pair_levels([8, 16], [32, 64])
    # teacher levels hold 1, 2, 3; student levels 10, 20, 30; adapters are the identity
    t = [torch.full((1, 1, 16 // 2 ** i, 16 // 2 ** i), float(i + 1)) for i in range(3)]
    s = [torch.full((1, 1, 8 // 2 ** i, 8 // 2 ** i), 10.0 * (i + 1)) for i in range(3)]
    fitnet = FitNet(student_channels=1, teacher_channels=1, num_levels=2)
    for level in range(2):
        _set_adapter(fitnet, level, [1.0])
    step = _step(_view(t, [8, 16, 32], [(128, 128)]), _view(s, [16, 32, 64], [(128, 128)]))
    # stride 16: teacher 2 vs student 10; stride 32: teacher 3 vs student 20; mean over levels
    assert fitnet(step)["loss_kd_fitnet"].item() == pytest.approx(((10 - 2) ** 2 + (20 - 3) ** 2) / 2)
    with pytest.raises(ValueError, match="num_levels=2"):
        FitNet(student_channels=1, teacher_channels=1, num_levels=3)(step)


def test_gradient_reaches_student_and_adapter_only():
    t = torch.randn(2, 4, 3, 3)
    s = torch.randn(2, 2, 3, 3, requires_grad=True)
    fitnet = FitNet(student_channels=2, teacher_channels=4, num_levels=1)
    step = _step(_view([t], [8], [(24, 24), (16, 24)]), _view([s], [8], [(24, 24), (16, 24)]))
    fitnet(step)["loss_kd_fitnet"].backward()
    assert s.grad.abs().sum() > 0 and fitnet.adapters[0].weight.grad.abs().sum() > 0
    assert t.grad is None


def test_encoder_input_source_needs_a_detr():
    with pytest.raises(ValueError, match="source"):
        FitNet(student_channels=1, teacher_channels=1, num_levels=1, source="logits")
    view = _view([torch.zeros(1, 1, 2, 2)], [8], [(16, 16)])
    fitnet = FitNet(student_channels=1, teacher_channels=1, num_levels=1, source="encoder_input")
    with pytest.raises(ValueError, match="encoder_input"):
        fitnet(_step(view, view))
