"""FLOP handles for detectron2's (fvcore's) jit-based counter, for the ops it does not know.

``detectron2.utils.analysis.FlopCountAnalysis`` (what detectron2's ``tools/analyze_model.py``
uses) skips, with a warning, every op without a handle. Two of them carry much of a DETR's cost:

- d2kd's multi-scale deformable attention, traced as ``prim::PythonOp._MSDeformAttnFunction``
  (7 calls in the built-in DINO R-50: 3 encoder layers and 4 decoder cross-attentions);
- ``aten::scaled_dot_product_attention`` (and ``aten::_native_multi_head_attention``, the fused
  path of ``nn.MultiheadAttention``).

Counts follow fvcore's convention: one "flop" is one multiply-add.

- Deformable attention: each of the ``B*Q*H*L*P`` samples interpolates ``C`` channels bilinearly
  (4 multiply-adds per channel) and adds them with its attention weight (1 more):
  ``5*B*Q*H*L*P*C``. Computing the sampling locations and weights are ordinary linear layers,
  counted by fvcore already.
- Scaled dot-product attention: ``q @ k^T`` and ``attn @ v``: ``N*Lq*Lk*(E + Ev)`` for ``N``
  batch x heads; the softmax is not counted (as fvcore does not count it for ``bmm`` models).
- Fused multi-head attention: the four projections plus the attention above.

:func:`install_flop_handles` adds these to fvcore's default handles, so any
``FlopCountAnalysis`` built afterwards (detectron2's ``tools/analyze_model.py`` included, after
``import d2kd.engine.flops; d2kd.engine.flops.install_flop_handles()``) counts them.
"""
from typing import Any, Dict, List

from fvcore.nn.jit_handles import get_shape

DEFORM_ATTN_OP = "prim::PythonOp._MSDeformAttnFunction"


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def ms_deform_attn_flop(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle of ``_MSDeformAttnFunction``: inputs ``value[B,S,H,C], spatial_shapes,
    level_start_index, sampling_locations[B,Q,H,L,P,2], attention_weights[B,Q,H,L,P]``."""
    value = get_shape(inputs[0])
    weights = get_shape(inputs[4])
    return 5 * _prod(weights) * int(value[-1])


def sdpa_flop(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle of ``aten::scaled_dot_product_attention``: ``q[..., Lq, E], k[..., Lk, E],
    v[..., Lk, Ev]``."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    return _prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def native_mha_flop(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle of ``aten::_native_multi_head_attention``: ``query[B, Lq, D], key[B, Lk, D],
    value[B, Lk, D], ...``: 4 projections and the attention."""
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    b, lq, d = q
    lk = k[1]
    return b * d * d * (2 * lq + 2 * lk) + b * lq * lk * 2 * d


HANDLES: Dict[str, Any] = {
    DEFORM_ATTN_OP: ms_deform_attn_flop,
    "aten::scaled_dot_product_attention": sdpa_flop,
    "aten::_native_multi_head_attention": native_mha_flop,
}


def install_flop_handles() -> None:
    """Makes every ``fvcore``/``detectron2`` ``FlopCountAnalysis`` created from now on use
    :data:`HANDLES` (added to fvcore's table of default handles)."""
    from fvcore.nn import flop_count

    flop_count._DEFAULT_SUPPORTED_OPS.update(HANDLES)


def flop_count_analysis(model, inputs):
    """``detectron2.utils.analysis.FlopCountAnalysis(model, inputs)`` with :data:`HANDLES`."""
    from detectron2.utils.analysis import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle(**HANDLES)
    return analysis
