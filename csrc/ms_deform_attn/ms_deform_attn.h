// d2kd::ms_deform_attn_{forward,backward}: multi-scale deformable attention (Deformable DETR,
// Zhu et al. 2021, Eq. 2-3), shared declarations of the CPU (.cpp) and CUDA (.cu) kernels.
//
//   ms_deform_attn_forward(value[B,S,H,C], spatial_shapes[L,2] i64, level_start_index[L] i64,
//                          sampling_locations[B,Q,H,L,P,2], attention_weights[B,Q,H,L,P])
//       -> out[B,Q,H*C]
//   ms_deform_attn_backward(<the same five>, grad_output[B,Q,H*C])
//       -> (grad_value, grad_sampling_locations, grad_attention_weights)
//
// out[b,q,h,:] = sum_{l,p} attention_weights[b,q,h,l,p] * bilinear(value level l of (b,h), loc),
// with loc = sampling_locations[b,q,h,l,p] = (x, y) in [0,1] of level l, pixel centres at
// (i+0.5)/W_l (grid_sample's align_corners=False) and zeros outside the map.
//
// Dtypes: value float32 or float64 (CUDA also float16 / bfloat16); sampling_locations and
// attention_weights float64 when value is float64, else float32 (half values are sampled with
// float coordinates and accumulated in float). grad_output has value's dtype.
#pragma once

#include <ATen/ATen.h>

namespace d2kd {
namespace msda {

// Sizes of one call, read from the tensors' shapes by check_inputs.
struct Dims {
  int64_t B, S, H, C, Q, L, P;
};

// Checks dims, dtypes, devices and shape consistency of the op's inputs (grad_output too when
// defined) and returns the sizes. With check_levels, also reads spatial_shapes and
// level_start_index (they must then be on the CPU) and checks S == sum_l H_l*W_l and that the
// start index is the running sum of the level sizes. Errors are ValueError / TypeError.
Dims check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                  const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                  const at::Tensor& attention_weights, const at::Tensor& grad_output,
                  bool check_levels);

// The dtype that sampling_locations and attention_weights must have for a value of `dtype`.
inline at::ScalarType coord_dtype(at::ScalarType value_dtype) {
  return value_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace msda
}  // namespace d2kd
