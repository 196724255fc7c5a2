// CUDA kernels of d2kd::ms_deform_attn_{forward,backward} (compiled only when WITH_CUDA; the
// schemas and the CPU kernels are in ms_deform_attn.cpp, the math in ms_deform_attn.h).
//
// Threads: each output row (b, q, h) gets a group of G = min(32, next_pow2(C)) consecutive
// lanes of one warp, lane i taking channels i, i+G, ...; loads and stores of a row are then
// coalesced along the channels, which are contiguous in value.
// - forward: each lane sums its channels over the L*P samples and their four corners.
// - backward: each lane adds its channels' share to grad_value with atomicAdd (rows of
//   different queries meet at the same pixels), and its partial gradients of the attention
//   weight and of the location are summed over the group with warp shuffles; lane 0 writes them.
//
// Dtypes: value float32, float64, float16 or bfloat16; sampling locations and attention weights
// in float32 (float64 for float64 values), arithmetic in float (double), so half values are
// sampled at full-precision coordinates. grad_value of half values is accumulated in a float32
// buffer (half atomics would lose the small contributions) and converted at the end.
//
// Only c10's CUDA headers are used (not ATen/cuda/CUDAContext.h, which pulls in the cuBLAS and
// cuSPARSE headers that a minimal CUDA toolkit lacks).
//
// The level sizes are not checked against S here (that would read spatial_shapes from the GPU
// and synchronise every call); instead every corner index is checked against [0, S), so
// inconsistent inputs cannot touch memory outside value.
#include "ms_deform_attn/ms_deform_attn.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

namespace d2kd {
namespace msda {
namespace {

constexpr int kThreadsPerBlock = 256;

struct Sizes {
  int64_t rows;  // B * Q * H
  int64_t Q, S, H, C, L, P;
  int group;      // lanes per row: a power of two <= 32
  int log_group;
};

// Where one sample lands: its four corners (x0,y0), (x0+1,y0), (x0,y0+1), (x0+1,y0+1), their
// pixel indices in the (b, h) slice and whether they lie inside the map, the bilinear weights,
// and the fractional position. Returns false when no corner can matter (at least one pixel
// outside, or not finite). At x == -1 exactly corner x0+1 = 0 still counts: zero weight, but a
// gradient, as in grid_sample.
template <typename acc_t>
struct Corners {
  int64_t pix[4];
  bool ok[4];
  acc_t cw[4];
  acc_t fx, fy;
};

template <typename acc_t>
__device__ __forceinline__ bool locate(acc_t lx, acc_t ly, int64_t h_l, int64_t w_l, int64_t start, int64_t S,
                                       Corners<acc_t>& c) {
  const acc_t wf = static_cast<acc_t>(w_l), hf = static_cast<acc_t>(h_l);
  const acc_t x = lx * wf - acc_t(0.5), y = ly * hf - acc_t(0.5);
  if (!(x >= acc_t(-1) && x <= wf && y >= acc_t(-1) && y <= hf)) return false;
  const acc_t xf = floor(x), yf = floor(y);
  const int64_t x0 = static_cast<int64_t>(xf), y0 = static_cast<int64_t>(yf);
  c.fx = x - xf;
  c.fy = y - yf;
  const acc_t gx = acc_t(1) - c.fx, gy = acc_t(1) - c.fy;
  c.cw[0] = gy * gx;
  c.cw[1] = gy * c.fx;
  c.cw[2] = c.fy * gx;
  c.cw[3] = c.fy * c.fx;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int64_t cx = x0 + (k & 1), cy = y0 + (k >> 1);
    const int64_t p = start + cy * w_l + cx;
    c.pix[k] = p;
    c.ok[k] = cx >= 0 && cx < w_l && cy >= 0 && cy < h_l && p >= 0 && p < S;
  }
  return true;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                   const int64_t* __restrict__ starts, const at::opmath_type<scalar_t>* __restrict__ loc,
                   const at::opmath_type<scalar_t>* __restrict__ attn, scalar_t* __restrict__ out, Sizes n) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = tid >> n.log_group;
  const int lane = static_cast<int>(tid & (n.group - 1));
  if (row >= n.rows) return;
  const int64_t h = row % n.H, b = row / (n.H * n.Q), HC = n.H * n.C, LP = n.L * n.P;
  const scalar_t* vbase = value + b * n.S * HC + h * n.C;
  const acc_t* lrow = loc + row * LP * 2;
  const acc_t* arow = attn + row * LP;
  for (int64_t c = lane; c < n.C; c += n.group) {
    acc_t acc = 0;
    for (int64_t l = 0; l < n.L; ++l) {
      const int64_t h_l = shapes[2 * l], w_l = shapes[2 * l + 1], start = starts[l];
      for (int64_t p = 0; p < n.P; ++p) {
        const int64_t j = l * n.P + p;
        Corners<acc_t> cr;
        if (!locate(lrow[2 * j], lrow[2 * j + 1], h_l, w_l, start, n.S, cr)) continue;
        const acc_t w = arow[j];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (cr.ok[k]) acc += w * cr.cw[k] * static_cast<acc_t>(vbase[cr.pix[k] * HC + c]);
        }
      }
    }
    out[row * n.C + c] = static_cast<scalar_t>(acc);
  }
}

// Sum of v over the `group` lanes of a row (groups never straddle a warp; `mask` = its lanes).
template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t v, unsigned mask, int group) {
  for (int offset = group / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(mask, v, offset, group);
  return v;
}

// grad_acc_t: scalar_t for float / double values, float for half ones.
template <typename scalar_t, typename grad_acc_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                    const int64_t* __restrict__ starts, const at::opmath_type<scalar_t>* __restrict__ loc,
                    const at::opmath_type<scalar_t>* __restrict__ attn, const scalar_t* __restrict__ grad_out,
                    grad_acc_t* __restrict__ grad_value, at::opmath_type<scalar_t>* __restrict__ grad_loc,
                    at::opmath_type<scalar_t>* __restrict__ grad_attn, Sizes n) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = tid >> n.log_group;
  const int lane = static_cast<int>(tid & (n.group - 1));
  // A whole group leaves together (rows are whole groups), so the shuffles below only ever
  // involve lanes of active groups.
  if (row >= n.rows) return;
  const unsigned mask =
      n.group == 32 ? 0xffffffffu : ((1u << n.group) - 1u) << (threadIdx.x % 32 & ~(n.group - 1));
  const int64_t h = row % n.H, b = row / (n.H * n.Q), HC = n.H * n.C, LP = n.L * n.P;
  const int64_t slice = b * n.S * HC + h * n.C;
  const scalar_t* vbase = value + slice;
  grad_acc_t* gbase = grad_value + slice;
  const acc_t* lrow = loc + row * LP * 2;
  const acc_t* arow = attn + row * LP;
  const scalar_t* g = grad_out + row * n.C;
  for (int64_t l = 0; l < n.L; ++l) {
    const int64_t h_l = shapes[2 * l], w_l = shapes[2 * l + 1], start = starts[l];
    for (int64_t p = 0; p < n.P; ++p) {
      const int64_t j = l * n.P + p;
      Corners<acc_t> cr;
      acc_t part_attn = 0, part_x = 0, part_y = 0;
      // The same for every lane of the group: they read the same sample.
      if (locate(lrow[2 * j], lrow[2 * j + 1], h_l, w_l, start, n.S, cr)) {
        const acc_t w = arow[j];
        const acc_t gx = acc_t(1) - cr.fx, gy = acc_t(1) - cr.fy;
        for (int64_t c = lane; c < n.C; c += n.group) {
          const acc_t gc = static_cast<acc_t>(g[c]);
          acc_t d[4];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            d[k] = 0;
            if (cr.ok[k]) {
              d[k] = gc * static_cast<acc_t>(vbase[cr.pix[k] * HC + c]);
              atomicAdd(gbase + cr.pix[k] * HC + c, static_cast<grad_acc_t>(w * cr.cw[k] * gc));
            }
          }
          part_attn += cr.cw[0] * d[0] + cr.cw[1] * d[1] + cr.cw[2] * d[2] + cr.cw[3] * d[3];
          // d sample / d x = gy (v1 - v0) + fy (v3 - v2), with x = loc_x * W_l - 0.5.
          part_x += gy * (d[1] - d[0]) + cr.fy * (d[3] - d[2]);
          part_y += gx * (d[2] - d[0]) + cr.fx * (d[3] - d[1]);
        }
        part_x *= w * static_cast<acc_t>(w_l);
        part_y *= w * static_cast<acc_t>(h_l);
      }
      part_attn = group_sum(part_attn, mask, n.group);
      part_x = group_sum(part_x, mask, n.group);
      part_y = group_sum(part_y, mask, n.group);
      if (lane == 0) {
        grad_attn[row * LP + j] = part_attn;
        grad_loc[(row * LP + j) * 2] = part_x;
        grad_loc[(row * LP + j) * 2 + 1] = part_y;
      }
    }
  }
}

Sizes make_sizes(const Dims& d) {
  Sizes n{d.B * d.Q * d.H, d.Q, d.S, d.H, d.C, d.L, d.P, 1, 0};
  while (n.group < 32 && n.group < d.C) {
    n.group *= 2;
    ++n.log_group;
  }
  return n;
}

unsigned blocks_for(const Sizes& n) {
  const int64_t blocks = (n.rows * n.group + kThreadsPerBlock - 1) / kThreadsPerBlock;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "ms_deform_attn: ", n.rows,
              " rows need more thread blocks than one CUDA grid holds");
  return static_cast<unsigned>(blocks);
}

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights) {
  const Dims d = check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                              at::Tensor(), /*check_levels=*/false);
  const c10::cuda::CUDAGuard guard(value.device());
  const at::Tensor v = value.contiguous(), shapes = spatial_shapes.contiguous(), starts = level_start_index.contiguous(),
                   loc = sampling_locations.contiguous(), attn = attention_weights.contiguous();
  // Every entry is written: the lanes of a row cover all its channels.
  at::Tensor out = at::empty({d.B, d.Q, d.H * d.C}, value.options());
  const Sizes n = make_sizes(d);
  if (n.rows == 0 || d.C == 0 || d.P == 0) return out.zero_();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t><<<blocks_for(n), kThreadsPerBlock, 0, stream>>>(
        v.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), loc.data_ptr<acc_t>(),
        attn.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  TORCH_CHECK_VALUE(grad_output.defined(), "ms_deform_attn: grad_output is undefined");
  const Dims d = check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                              grad_output, /*check_levels=*/false);
  const c10::cuda::CUDAGuard guard(value.device());
  const at::Tensor v = value.contiguous(), shapes = spatial_shapes.contiguous(), starts = level_start_index.contiguous(),
                   loc = sampling_locations.contiguous(), attn = attention_weights.contiguous(),
                   go = grad_output.contiguous();
  const bool half = value.scalar_type() == at::kHalf || value.scalar_type() == at::kBFloat16;
  at::Tensor grad_value = at::zeros(v.sizes(), v.options().dtype(half ? at::kFloat : v.scalar_type()));
  // Every entry of these two is written by lane 0 of its row's group.
  at::Tensor grad_loc = at::empty_like(loc);
  at::Tensor grad_attn = at::empty_like(attn);
  const Sizes n = make_sizes(d);
  if (n.rows == 0 || d.C == 0 || d.P == 0) {
    grad_loc.zero_();
    grad_attn.zero_();
  } else {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using grad_acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      backward_kernel<scalar_t, grad_acc_t><<<blocks_for(n), kThreadsPerBlock, 0, stream>>>(
          v.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), loc.data_ptr<acc_t>(),
          attn.data_ptr<acc_t>(), go.data_ptr<scalar_t>(), grad_value.data_ptr<grad_acc_t>(),
          grad_loc.data_ptr<acc_t>(), grad_attn.data_ptr<acc_t>(), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (half) grad_value = grad_value.to(value.scalar_type());
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace
}  // namespace msda
}  // namespace d2kd

TORCH_LIBRARY_IMPL(d2kd, CUDA, m) {
  m.impl("ms_deform_attn_forward", &d2kd::msda::ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &d2kd::msda::ms_deform_attn_backward_cuda);
}
