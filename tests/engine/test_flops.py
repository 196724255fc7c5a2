"""FLOP counting of a DINO config includes d2kd's deformable attention and PyTorch's scaled
dot-product attention (detectron2's counter skipped both), with the documented formulas."""
import os

import torch

from d2kd.engine.flops import DEFORM_ATTN_OP, flop_count_analysis

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_dino_flops_include_the_attention_ops(monkeypatch):
    from detectron2.config import LazyConfig, instantiate
    from detectron2.utils.analysis import FlopCountAnalysis

    import d2kd.ops.ms_deform_attn as ops

    cfg = LazyConfig.load(os.path.join(ROOT, "configs/detr/dino_R18_builtin.py"))
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    inputs = [{"image": torch.rand(3, 96, 128) * 255, "height": 96, "width": 128}]

    # Shapes each call really sees, for the expected counts.
    deform, sdpa = [], []
    forward = ops._MSDeformAttnFunction.forward

    def recording(ctx, value, shapes, start, locations, weights):
        deform.append(5 * weights.numel() * value.shape[-1])
        return forward(ctx, value, shapes, start, locations, weights)

    monkeypatch.setattr(ops._MSDeformAttnFunction, "forward", staticmethod(recording))
    sdpa_fn = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):
        sdpa.append(q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1]))
        return sdpa_fn(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    with torch.no_grad():
        model(inputs)
    assert deform and sdpa, "the model ran neither op: the test would prove nothing"
    monkeypatch.undo()

    ours = flop_count_analysis(model, inputs)
    plain = FlopCountAnalysis(model, inputs)
    for a in (ours, plain):
        a.unsupported_ops_warnings(False)
        a.uncalled_modules_warnings(False)
        a.total()
    by_op = ours.by_operator()
    assert by_op["PythonOp._MSDeformAttnFunction"] == sum(deform)
    assert by_op["scaled_dot_product_attention"] == sum(sdpa)
    assert DEFORM_ATTN_OP not in ours.unsupported_ops()
    assert "aten::scaled_dot_product_attention" not in ours.unsupported_ops()
    assert DEFORM_ATTN_OP in plain.unsupported_ops()  # what detectron2 alone does
    assert ours.total() == plain.total() + by_op["PythonOp._MSDeformAttnFunction"] + by_op[
        "scaled_dot_product_attention"]
