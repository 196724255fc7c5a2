// d2kd::ms_deform_attn_{forward,backward}: op schemas, input checks, CPU kernels, and the CPU
// and Meta registrations (the CUDA kernels are in ms_deform_attn_cuda.cu). See
// ms_deform_attn.h for the math and the dtype contract.
//
// CPU scheme. Channels are contiguous in value ([B,S,H,C]: one pixel of one head is C
// consecutive numbers), so the kernels work on whole channel rows with 32-byte vectors and
// never materialise sampled values. Rows (b, q, h) are visited in memory order, and each row
// is handled in two steps, pipelined one row apart:
// - locate: the L*P samples, a vector of samples at a time, give for each bilinear corner the
//   address of its value row (of a zero row outside the map: the zero padding) and its weight;
//   the rows the next step will touch are prefetched;
// - forward: out[c] = sum over corners of weight * row[c], accumulated in registers;
//   backward: for each sample the corner dot products d_k = <grad_out, row_k> give the
//   gradients of the attention weight and of the location, and the same pass adds
//   weight_k * grad_out to grad_value at the corner.
// The forward spreads rows over ATen's threads. The backward gives each task a batch element
// and a group of heads, so that the rows grad_value[b, :, heads of the group, :] it scatters
// into belong to it alone: no atomics, no per-thread copies, results independent of threads.
// The hot loops are compiled twice, for x86-64's baseline and for AVX2+FMA, and the variant is
// chosen at run time from the CPU (setup.py compiles for the baseline only).
#include "ms_deform_attn/ms_deform_attn.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__)
// GCC notes the AVX vector ABI for the 32-byte vector helpers; they are always inlined, so no
// vector crosses a real call.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define D2KD_MSDA_AVX2 1
#endif

#define D2KD_MSDA_INLINE inline __attribute__((always_inline))

namespace d2kd {
namespace msda {

Dims check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                  const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                  const at::Tensor& attention_weights, const at::Tensor& grad_output,
                  bool check_levels) {
  TORCH_CHECK_VALUE(value.dim() == 4, "ms_deform_attn: value must be [B, S, H, C], got shape ",
                    value.sizes());
  TORCH_CHECK_VALUE(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
                    "ms_deform_attn: spatial_shapes must be [L, 2], got shape ", spatial_shapes.sizes());
  Dims d{value.size(0), value.size(1), value.size(2), value.size(3), 0, spatial_shapes.size(0), 0};
  TORCH_CHECK_VALUE(d.L >= 1, "ms_deform_attn: spatial_shapes must have at least one level");
  TORCH_CHECK_VALUE(level_start_index.dim() == 1 && level_start_index.size(0) == d.L,
                    "ms_deform_attn: level_start_index must be [L] = [", d.L, "], got shape ",
                    level_start_index.sizes());
  TORCH_CHECK_VALUE(sampling_locations.dim() == 6,
                    "ms_deform_attn: sampling_locations must be [B, Q, H, L, P, 2], got shape ",
                    sampling_locations.sizes());
  d.Q = sampling_locations.size(1);
  d.P = sampling_locations.size(4);
  TORCH_CHECK_VALUE(sampling_locations.size(0) == d.B && sampling_locations.size(2) == d.H &&
                        sampling_locations.size(3) == d.L && sampling_locations.size(5) == 2,
                    "ms_deform_attn: sampling_locations must be [B, Q, H, L, P, 2] with B=", d.B,
                    ", H=", d.H, ", L=", d.L, " (from value and spatial_shapes), got shape ",
                    sampling_locations.sizes());
  TORCH_CHECK_VALUE(attention_weights.dim() == 5 && attention_weights.size(0) == d.B &&
                        attention_weights.size(1) == d.Q && attention_weights.size(2) == d.H &&
                        attention_weights.size(3) == d.L && attention_weights.size(4) == d.P,
                    "ms_deform_attn: attention_weights must be [B, Q, H, L, P] = [", d.B, ", ", d.Q,
                    ", ", d.H, ", ", d.L, ", ", d.P, "], got shape ", attention_weights.sizes());

  TORCH_CHECK_TYPE(at::isFloatingType(value.scalar_type()),
                   "ms_deform_attn: value must be a floating-point tensor, got ", value.scalar_type());
  const at::ScalarType coord = coord_dtype(value.scalar_type());
  TORCH_CHECK_TYPE(sampling_locations.scalar_type() == coord && attention_weights.scalar_type() == coord,
                   "ms_deform_attn: for a ", value.scalar_type(),
                   " value, sampling_locations and attention_weights must be ", coord, ", got ",
                   sampling_locations.scalar_type(), " and ", attention_weights.scalar_type());
  TORCH_CHECK_TYPE(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
                   "ms_deform_attn: spatial_shapes and level_start_index must be int64, got ",
                   spatial_shapes.scalar_type(), " and ", level_start_index.scalar_type());

  const at::Device device = value.device();
  TORCH_CHECK_VALUE(spatial_shapes.device() == device && level_start_index.device() == device &&
                        sampling_locations.device() == device && attention_weights.device() == device,
                    "ms_deform_attn: all inputs must be on value's device (", device, "), got spatial_shapes on ",
                    spatial_shapes.device(), ", level_start_index on ", level_start_index.device(),
                    ", sampling_locations on ", sampling_locations.device(), ", attention_weights on ",
                    attention_weights.device());

  if (grad_output.defined()) {
    TORCH_CHECK_VALUE(grad_output.dim() == 3 && grad_output.size(0) == d.B && grad_output.size(1) == d.Q &&
                          grad_output.size(2) == d.H * d.C,
                      "ms_deform_attn: grad_output must be [B, Q, H*C] = [", d.B, ", ", d.Q, ", ", d.H * d.C,
                      "], got shape ", grad_output.sizes());
    TORCH_CHECK_TYPE(grad_output.scalar_type() == value.scalar_type(),
                     "ms_deform_attn: grad_output must have value's dtype ", value.scalar_type(), ", got ",
                     grad_output.scalar_type());
    TORCH_CHECK_VALUE(grad_output.device() == device, "ms_deform_attn: grad_output must be on ", device,
                      ", got ", grad_output.device());
  }

  if (check_levels) {
    TORCH_CHECK_VALUE(spatial_shapes.device().is_cpu() && level_start_index.device().is_cpu(),
                      "ms_deform_attn: the level check reads spatial_shapes on the CPU");
    const at::Tensor shapes = spatial_shapes.contiguous();
    const at::Tensor starts = level_start_index.contiguous();
    const int64_t* hw = shapes.data_ptr<int64_t>();
    const int64_t* st = starts.data_ptr<int64_t>();
    int64_t total = 0;
    for (int64_t l = 0; l < d.L; ++l) {
      TORCH_CHECK_VALUE(hw[2 * l] >= 1 && hw[2 * l + 1] >= 1, "ms_deform_attn: level ", l,
                        " has spatial shape (", hw[2 * l], ", ", hw[2 * l + 1], "); sizes must be >= 1");
      TORCH_CHECK_VALUE(st[l] == total, "ms_deform_attn: level_start_index[", l, "] is ", st[l],
                        " but levels 0..", l - 1, " hold ", total,
                        " tokens (level_start_index must be the running sum of H_l*W_l)");
      total += hw[2 * l] * hw[2 * l + 1];
    }
    TORCH_CHECK_VALUE(total == d.S, "ms_deform_attn: value has S=", d.S,
                      " tokens but spatial_shapes sum to sum_l H_l*W_l = ", total);
  }
  return d;
}

namespace {

// ---------------------------------------------------------------------------------------------
// 32-byte vectors (GCC/Clang vector extensions): AVX registers in the AVX2 variant, pairs of
// SSE registers in the baseline one. Loads and stores go through memcpy (rows are unaligned).
// Pixel indices are int32 next to float and int64 next to double, so that a vector of indices
// has as many lanes as a vector of coordinates.

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  typedef float half __attribute__((vector_size(16)));
  typedef int32_t itype __attribute__((vector_size(32)));
  typedef int32_t index;
  static constexpr int64_t lanes = 8;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  typedef double half __attribute__((vector_size(16)));
  typedef int64_t itype __attribute__((vector_size(32)));
  typedef int64_t index;
  static constexpr int64_t lanes = 4;
};

typedef int64_t i64x4 __attribute__((vector_size(32)));  // four addresses

template <typename V, typename E>
D2KD_MSDA_INLINE V vload(const E* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename E>
D2KD_MSDA_INLINE void vstore(E* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// Lower (which = 0) or upper (1) half of a vector. Through memory rather than
// __builtin_shufflevector, which GCC has only since version 12; compilers turn it into one
// extract instruction.
template <typename Half, typename V>
D2KD_MSDA_INLINE Half half_of(const V& v, int which) {
  static_assert(2 * sizeof(Half) == sizeof(V), "half of a vector");
  Half h;
  std::memcpy(&h, reinterpret_cast<const char*>(&v) + which * sizeof(Half), sizeof(Half));
  return h;
}

// (x, y) pairs p[0 .. 2*lanes) -> x and y vectors.
#if defined(__clang__)
#define D2KD_MSDA_SHUFFLE2(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define D2KD_MSDA_SHUFFLE2(a, b, ...) __builtin_shuffle(a, b, IV{__VA_ARGS__})
#endif
template <typename T>
D2KD_MSDA_INLINE void deinterleave(const T* p, typename Vec<T>::type& x, typename Vec<T>::type& y) {
  using V = typename Vec<T>::type;
  using IV [[maybe_unused]] = typename Vec<T>::itype;  // shuffle masks (GCC)
  const V a = vload<V>(p), b = vload<V>(p + Vec<T>::lanes);
  if constexpr (Vec<T>::lanes == 8) {
    x = D2KD_MSDA_SHUFFLE2(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
    y = D2KD_MSDA_SHUFFLE2(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
  } else {
    x = D2KD_MSDA_SHUFFLE2(a, b, 0, 2, 4, 6);
    y = D2KD_MSDA_SHUFFLE2(a, b, 1, 3, 5, 7);
  }
}
#undef D2KD_MSDA_SHUFFLE2

D2KD_MSDA_INLINE float hsum(const Vec<float>::type& v) {
  using H = Vec<float>::half;
  const H h = half_of<H>(v, 0) + half_of<H>(v, 1);
  return (h[0] + h[2]) + (h[1] + h[3]);
}
D2KD_MSDA_INLINE double hsum(const Vec<double>::type& v) {
  using H = Vec<double>::half;
  const H h = half_of<H>(v, 0) + half_of<H>(v, 1);
  return h[0] + h[1];
}

// Per-sample constants of a call (sample j = l*P + p), padded to a multiple of the vector width
// (padding samples get a location outside every map).
template <typename T>
struct SampleTable {
  using Index = typename Vec<T>::index;
  int64_t LP = 0, LPpad = 0;
  std::vector<T> wf, hf;             // W_l, H_l
  std::vector<Index> wi, hi, start;  // W_l, H_l, level start in S

  SampleTable(const std::vector<int64_t>& levels, int64_t L, int64_t P) {
    constexpr int64_t W = Vec<T>::lanes;
    LP = L * P;
    LPpad = (LP + W - 1) / W * W;
    wf.assign(LPpad, T(1));
    hf.assign(LPpad, T(1));
    wi.assign(LPpad, 1);
    hi.assign(LPpad, 1);
    start.assign(LPpad, 0);
    for (int64_t j = 0; j < LP; ++j) {
      const int64_t* lv = levels.data() + 3 * (j / P);
      hf[j] = static_cast<T>(lv[0]);
      wf[j] = static_cast<T>(lv[1]);
      hi[j] = static_cast<Index>(lv[0]);
      wi[j] = static_cast<Index>(lv[1]);
      start[j] = static_cast<Index>(lv[2]);
    }
  }
};

// dst[i] = mask[i] ? base + pix[i] * row_bytes : fallback, for a vector of pixels. With
// `small` (every offset in the slice fits in int32), the offsets are computed in 32 bits:
// AVX2 has no 64-bit multiply.
D2KD_MSDA_INLINE void store_addresses(int64_t* dst, const Vec<double>::itype& pix, const Vec<double>::itype& mask,
                                      int64_t row_bytes, bool /*small*/, const void* base, const void* fallback) {
  const i64x4 at = pix * row_bytes + reinterpret_cast<int64_t>(base);
  vstore(dst, mask ? at : i64x4{} + reinterpret_cast<int64_t>(fallback));
}
D2KD_MSDA_INLINE void store_addresses(int64_t* dst, const Vec<float>::itype& pix, const Vec<float>::itype& mask,
                                      int64_t row_bytes, bool small, const void* base, const void* fallback) {
  typedef int32_t i32x4 __attribute__((vector_size(16)));
  const i64x4 at = i64x4{} + reinterpret_cast<int64_t>(base);
  const i64x4 other = i64x4{} + reinterpret_cast<int64_t>(fallback);
  typedef uint32_t u32x8 __attribute__((vector_size(32)));
  // Unsigned: the lanes outside the map may hold any index (they are masked below).
  const Vec<float>::itype off = (Vec<float>::itype)((u32x8)pix * static_cast<uint32_t>(row_bytes));
  const i32x4 m[2] = {half_of<i32x4>(mask, 0), half_of<i32x4>(mask, 1)};
  const i32x4 p[2] = {half_of<i32x4>(small ? off : pix, 0), half_of<i32x4>(small ? off : pix, 1)};
  for (int half = 0; half < 2; ++half) {
    i64x4 o = __builtin_convertvector(p[half], i64x4);
    if (!small) o *= row_bytes;
    const i64x4 keep = __builtin_convertvector(m[half], i64x4);  // sign-extends the all-ones lanes
    vstore(dst + 4 * half, keep ? o + at : other);
  }
}

// Where the L*P samples of one (b, q, h) row read, a vector of samples at a time. Corner k of
// sample j (k = 0: (x0, y0), 1: (x0+1, y0), 2: (x0, y0+1), 3: (x0+1, y0+1)) goes to entry
// k*LPpad + j: vptr = address of its value row (in the slice at `vbase`, pixels `stride`
// apart), or of `zero` outside the map (the zero padding); gptr (when `gbase` is given) the
// same in grad_value, or `trash` outside; cw = its bilinear weight, times the attention
// weight when `attn` is given. fx, fy (when given): the fractional positions.
// loc: 2*LPpad numbers, attn: LPpad. A sample at least one pixel outside the map, or not
// finite, is moved to x = y = -2, where all four corners are outside. At x == -1 exactly,
// corner x0+1 = 0 counts (zero weight, but a gradient), as in grid_sample.
template <typename T>
struct Located {
  int64_t* vptr;
  int64_t* gptr;
  T* cw;
  T* fx;
  T* fy;
};

template <typename T>
D2KD_MSDA_INLINE void locate_row(const T* __restrict loc, const T* __restrict attn, const SampleTable<T>& tab,
                                 const T* vbase, T* gbase, int64_t stride, bool small, const T* zero, T* trash,
                                 const Located<T>& out) {
  using V = typename Vec<T>::type;
  using IV = typename Vec<T>::itype;
  constexpr int64_t W = Vec<T>::lanes;
  const int64_t LPpad = tab.LPpad;
  const int64_t row_bytes = stride * static_cast<int64_t>(sizeof(T));
  for (int64_t j = 0; j < LPpad; j += W) {
    V x, y;
    deinterleave(loc + 2 * j, x, y);
    const V wf = vload<V>(tab.wf.data() + j), hf = vload<V>(tab.hf.data() + j);
    x = x * wf - T(0.5);
    y = y * hf - T(0.5);
    const IV in = (x >= T(-1)) & (x <= wf) & (y >= T(-1)) & (y <= hf);
    const V outside = V{} - T(2);
    x = in ? x : outside;
    y = in ? y : outside;
    // floor: truncation, minus one where that rounded up (x >= -2, so no overflow).
    const IV xt = __builtin_convertvector(x, IV), yt = __builtin_convertvector(y, IV);
    const IV x0 = xt + (x < __builtin_convertvector(xt, V)), y0 = yt + (y < __builtin_convertvector(yt, V));
    const V fx = x - __builtin_convertvector(x0, V), fy = y - __builtin_convertvector(y0, V);
    const V gx = T(1) - fx, gy = T(1) - fy;
    const IV wi = vload<IV>(tab.wi.data() + j), hi = vload<IV>(tab.hi.data() + j);
    const IV vx0 = (x0 >= 0) & (x0 < wi), vx1 = (x0 >= -1) & (x0 + 1 < wi);
    const IV vy0 = (y0 >= 0) & (y0 < hi), vy1 = (y0 >= -1) & (y0 + 1 < hi);
    const IV p = vload<IV>(tab.start.data() + j) + y0 * wi + x0;
    const IV mask[4] = {vy0 & vx0, vy0 & vx1, vy1 & vx0, vy1 & vx1};
    const IV pix[4] = {p, p + 1, p + wi, p + wi + 1};
    V w = V{} + T(1);
    if (attn != nullptr) w = vload<V>(attn + j);
    const V cw[4] = {gy * gx * w, gy * fx * w, fy * gx * w, fy * fx * w};
    for (int k = 0; k < 4; ++k) {
      store_addresses(out.vptr + k * LPpad + j, pix[k], mask[k], row_bytes, small, vbase, zero);
      if (gbase != nullptr) store_addresses(out.gptr + k * LPpad + j, pix[k], mask[k], row_bytes, small, gbase, trash);
      vstore(out.cw + k * LPpad + j, mask[k] ? cw[k] : V{});
    }
    if (out.fx != nullptr) {
      vstore(out.fx + j, fx);
      vstore(out.fy + j, fy);
    }
  }
}

template <typename T>
D2KD_MSDA_INLINE const T* row_at(int64_t address) {
  return reinterpret_cast<const T*>(address);
}

// Pulls the rows of a located row towards the core (`write`: for writing).
template <typename T>
D2KD_MSDA_INLINE void prefetch_rows(const int64_t* ptr, int64_t n, int64_t C, bool write) {
  constexpr int64_t per_line = 64 / sizeof(T);
  for (int64_t t = 0; t < n; ++t) {
    const T* r = row_at<T>(ptr[t]);
    for (int64_t c = 0; c < C; c += per_line) {
      if (write) {
        __builtin_prefetch(r + c, 1);
      } else {
        __builtin_prefetch(r + c);
      }
    }
  }
}

// out[0:C] = sum_t wt[t] * row t. NV > 0: C == NV vectors, kept in registers; NV == 0: any C.
template <typename T, int NV>
D2KD_MSDA_INLINE void gather_row(const int64_t* __restrict ptr, const T* __restrict wt, int64_t n, int64_t C,
                                 T* __restrict out) {
  using V = typename Vec<T>::type;
  constexpr int64_t W = Vec<T>::lanes;
  if constexpr (NV > 0) {
    // At least eight independent accumulators (an FMA waits four cycles for its predecessor,
    // and two issue per cycle): short rows use several sets, taking taps in turn.
    constexpr int SETS = NV >= 8 ? 1 : 8 / NV;
    V acc[SETS][NV];
    for (int u = 0; u < SETS; ++u)
      for (int i = 0; i < NV; ++i) acc[u][i] = V{};
    int64_t t = 0;
    for (; t + SETS <= n; t += SETS) {
      for (int u = 0; u < SETS; ++u) {
        const T* r = row_at<T>(ptr[t + u]);
        const T w = wt[t + u];
        for (int i = 0; i < NV; ++i) acc[u][i] += w * vload<V>(r + i * W);
      }
    }
    for (; t < n; ++t) {
      const T* r = row_at<T>(ptr[t]);
      const T w = wt[t];
      for (int i = 0; i < NV; ++i) acc[0][i] += w * vload<V>(r + i * W);
    }
    for (int i = 0; i < NV; ++i) {
      V sum = acc[0][i];
      for (int u = 1; u < SETS; ++u) sum += acc[u][i];
      vstore(out + i * W, sum);
    }
  } else {
    int64_t c = 0;
    for (; c + 4 * W <= C; c += 4 * W) {
      V a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int64_t t = 0; t < n; ++t) {
        const T* r = row_at<T>(ptr[t]) + c;
        const T w = wt[t];
        a0 += w * vload<V>(r);
        a1 += w * vload<V>(r + W);
        a2 += w * vload<V>(r + 2 * W);
        a3 += w * vload<V>(r + 3 * W);
      }
      vstore(out + c, a0);
      vstore(out + c + W, a1);
      vstore(out + c + 2 * W, a2);
      vstore(out + c + 3 * W, a3);
    }
    for (; c + W <= C; c += W) {
      V a = {};
      for (int64_t t = 0; t < n; ++t) a += wt[t] * vload<V>(row_at<T>(ptr[t]) + c);
      vstore(out + c, a);
    }
    for (; c < C; ++c) {
      T a = 0;
      for (int64_t t = 0; t < n; ++t) a += wt[t] * row_at<T>(ptr[t])[c];
      out[c] = a;
    }
  }
}

// For the four corner rows v[k] of one sample: d[k] = <g, v[k]>, and gv[k] += s[k] * g.
// NV as in gather_row.
template <typename T, int NV>
D2KD_MSDA_INLINE void corner_dots(const T* __restrict g, const T* const* v, T* const* gv, const T* s, int64_t C,
                                  T* d) {
  using V = typename Vec<T>::type;
  constexpr int64_t W = Vec<T>::lanes;
  if constexpr (NV > 0) {
    V gr[NV];
    for (int i = 0; i < NV; ++i) gr[i] = vload<V>(g + i * W);
    V acc[4];
    for (int k = 0; k < 4; ++k) {
      acc[k] = gr[0] * vload<V>(v[k]);
      for (int i = 1; i < NV; ++i) acc[k] += gr[i] * vload<V>(v[k] + i * W);
    }
    for (int k = 0; k < 4; ++k) {
      for (int i = 0; i < NV; ++i) vstore(gv[k] + i * W, vload<V>(gv[k] + i * W) + s[k] * gr[i]);
    }
    for (int k = 0; k < 4; ++k) d[k] = hsum(acc[k]);
  } else {
    for (int k = 0; k < 4; ++k) {
      const T* __restrict vk = v[k];
      T* __restrict gk = gv[k];
      const T sk = s[k];
      V acc = {};
      int64_t c = 0;
      for (; c + W <= C; c += W) {
        const V gc = vload<V>(g + c);
        acc += gc * vload<V>(vk + c);
        vstore(gk + c, vload<V>(gk + c) + sk * gc);
      }
      T dk = hsum(acc);
      for (; c < C; ++c) {
        dk += g[c] * vk[c];
        gk[c] += sk * g[c];
      }
      d[k] = dk;
    }
  }
}

// Sizes, pointers and sample table of one call.
template <typename T>
struct Args {
  const T* value;     // [B,S,H,C]
  const T* loc;       // [B,Q,H,L,P,2]
  const T* attn;      // [B,Q,H,L,P]
  const T* grad_out;  // [B,Q,H,C], backward only
  T* out;             // forward: [B,Q,H,C]; backward: grad_value [B,S,H,C]
  T* grad_loc;
  T* grad_attn;
  int64_t B, S, H, C, Q, L, P;
  int64_t heads_per_task;  // backward
  bool small;              // every element offset in value[b] fits in int32
  const SampleTable<T>* tab;
};

// Per-thread scratch: two located rows (the next row is located and prefetched while the
// current one is summed), padded copies of a row's inputs, a zero row (read at corners
// outside the map) and a trash row (takes their gradient).
template <typename T>
struct Scratch {
  std::vector<int64_t> vptr[2], gptr[2];
  std::vector<T> cw[2], fx[2], fy[2], loc, attn, zero, trash;
  Scratch(const SampleTable<T>& tab, int64_t C) {
    for (int i = 0; i < 2; ++i) {
      vptr[i].resize(4 * tab.LPpad);
      gptr[i].resize(4 * tab.LPpad);
      cw[i].resize(4 * tab.LPpad);
      fx[i].resize(tab.LPpad);
      fy[i].resize(tab.LPpad);
    }
    loc.assign(2 * tab.LPpad, T(-4));  // padding samples: outside every map
    attn.assign(tab.LPpad, T(0));
    zero.assign(C + Vec<T>::lanes, T(0));
    trash.assign(C + Vec<T>::lanes, T(0));
  }
  Located<T> located(int buf, bool fractions) {
    return {vptr[buf].data(), gptr[buf].data(), cw[buf].data(), fractions ? fx[buf].data() : nullptr,
            fractions ? fy[buf].data() : nullptr};
  }
  // The row's inputs, padded when L*P is not a multiple of the vector width.
  void inputs(const SampleTable<T>& tab, const T* l, const T* a, const T*& lp, const T*& ap) {
    if (tab.LPpad == tab.LP) {
      lp = l;
      ap = a;
      return;
    }
    std::memcpy(loc.data(), l, 2 * tab.LP * sizeof(T));
    std::memcpy(attn.data(), a, tab.LP * sizeof(T));
    lp = loc.data();
    ap = attn.data();
  }
};

// Locates row (b, q, h) into buffer `buf` and prefetches what it reads (and writes).
template <typename T>
D2KD_MSDA_INLINE void locate_and_prefetch(const Args<T>& a, int64_t row, const T* vbase, T* gbase, int buf,
                                          Scratch<T>& s) {
  const SampleTable<T>& tab = *a.tab;
  const T *lp, *ap;
  s.inputs(tab, a.loc + row * tab.LP * 2, a.attn + row * tab.LP, lp, ap);
  const int64_t n = 4 * tab.LPpad;
  if (gbase == nullptr) {
    locate_row<T>(lp, ap, tab, vbase, nullptr, a.H * a.C, a.small, s.zero.data(), nullptr, s.located(buf, false));
    prefetch_rows<T>(s.vptr[buf].data(), n, a.C, false);
  } else {
    locate_row<T>(lp, nullptr, tab, vbase, gbase, a.H * a.C, a.small, s.zero.data(), s.trash.data(),
                  s.located(buf, true));
    prefetch_rows<T>(s.vptr[buf].data(), n, a.C, false);
    prefetch_rows<T>(s.gptr[buf].data(), n, a.C, true);
  }
}

// Output rows [begin, end) of the flattened (b, q, h) axis. Row r is located (and its value
// rows prefetched) one step before it is summed.
template <typename T, int NV>
D2KD_MSDA_INLINE void forward_rows(const Args<T>& a, int64_t begin, int64_t end, Scratch<T>& s) {
  const int64_t n = 4 * a.tab->LPpad, HC = a.H * a.C;
  int64_t h = begin % a.H, b = begin / a.H / a.Q;
  int64_t q_left = a.Q - (begin / a.H) % a.Q;  // rows of batch b left, in queries
  int cur = 0;
  for (int64_t row = begin; row <= end; ++row) {
    if (row < end) {
      locate_and_prefetch<T>(a, row, a.value + b * a.S * HC + h * a.C, nullptr, cur, s);
      if (++h == a.H) {
        h = 0;
        if (--q_left == 0) {
          ++b;
          q_left = a.Q;
        }
      }
    }
    if (row > begin) gather_row<T, NV>(s.vptr[1 - cur].data(), s.cw[1 - cur].data(), n, a.C, a.out + (row - 1) * a.C);
    cur = 1 - cur;
  }
}

// Gradients of one located row: grad_loc / grad_attn of the row, and its share of grad_value.
template <typename T, int NV>
D2KD_MSDA_INLINE void backward_row(const Args<T>& a, int64_t row, int buf, Scratch<T>& s) {
  const SampleTable<T>& tab = *a.tab;
  const int64_t LP = tab.LP, LPpad = tab.LPpad;
  const int64_t* vptr = s.vptr[buf].data();
  const int64_t* gptr = s.gptr[buf].data();
  const T* cw = s.cw[buf].data();
  const T* fxs = s.fx[buf].data();
  const T* fys = s.fy[buf].data();
  const T* g = a.grad_out + row * a.C;
  const T* attn = a.attn + row * LP;
  T* gl = a.grad_loc + row * LP * 2;
  T* ga = a.grad_attn + row * LP;
  for (int64_t j = 0; j < LP; ++j) {
    const T w = attn[j];
    const T* v[4];
    T* gv[4];
    T c4[4], sw[4], d[4];
    for (int k = 0; k < 4; ++k) {
      v[k] = row_at<T>(vptr[k * LPpad + j]);
      gv[k] = const_cast<T*>(row_at<T>(gptr[k * LPpad + j]));
      c4[k] = cw[k * LPpad + j];
      sw[k] = w * c4[k];
    }
    corner_dots<T, NV>(g, v, gv, sw, a.C, d);
    const T fx = fxs[j], fy = fys[j], gx = T(1) - fx, gy = T(1) - fy;
    ga[j] = c4[0] * d[0] + c4[1] * d[1] + c4[2] * d[2] + c4[3] * d[3];
    // d sample / d x = gy (v1 - v0) + fy (v3 - v2), with x = loc_x * W_l - 0.5.
    gl[2 * j] = w * (gy * (d[1] - d[0]) + fy * (d[3] - d[2])) * tab.wf[j];
    gl[2 * j + 1] = w * (gx * (d[2] - d[0]) + fx * (d[3] - d[1])) * tab.hf[j];
  }
}

// Backward task t = (b, group of heads_per_task heads): all gradients of its rows, in (q, h)
// order. grad_value[b, :, heads of the group, :] belongs to this task alone.
template <typename T, int NV>
D2KD_MSDA_INLINE void backward_task(const Args<T>& a, int64_t t, Scratch<T>& s) {
  const int64_t groups = a.H / a.heads_per_task, HC = a.H * a.C;
  const int64_t b = t / groups, h0 = (t % groups) * a.heads_per_task, h1 = h0 + a.heads_per_task;
  const T* vslice = a.value + b * a.S * HC;
  T* gslice = a.out + b * a.S * HC;
  int cur = 0;
  int64_t prev_row = -1;
  for (int64_t q = 0; q < a.Q; ++q) {
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t row = (b * a.Q + q) * a.H + h;
      locate_and_prefetch<T>(a, row, vslice + h * a.C, gslice + h * a.C, cur, s);
      if (prev_row >= 0) backward_row<T, NV>(a, prev_row, 1 - cur, s);
      prev_row = row;
      cur = 1 - cur;
    }
  }
  if (prev_row >= 0) backward_row<T, NV>(a, prev_row, 1 - cur, s);
}

// Entry points of the hot loops, in a baseline and an AVX2+FMA variant (the always-inlined
// helpers take on the ISA of the function they are inlined into).
template <typename T, int NV>
void forward_base(const Args<T>& a, int64_t begin, int64_t end, Scratch<T>& s) {
  forward_rows<T, NV>(a, begin, end, s);
}
template <typename T, int NV>
void backward_base(const Args<T>& a, int64_t begin, int64_t end, Scratch<T>& s) {
  for (int64_t t = begin; t < end; ++t) backward_task<T, NV>(a, t, s);
}
#ifdef D2KD_MSDA_AVX2
template <typename T, int NV>
__attribute__((target("avx2,fma"))) void forward_avx2(const Args<T>& a, int64_t begin, int64_t end, Scratch<T>& s) {
  forward_rows<T, NV>(a, begin, end, s);
}
template <typename T, int NV>
__attribute__((target("avx2,fma"))) void backward_avx2(const Args<T>& a, int64_t begin, int64_t end, Scratch<T>& s) {
  for (int64_t t = begin; t < end; ++t) backward_task<T, NV>(a, t, s);
}
#endif

// AVX2 when the CPU has it, unless ATEN_CPU_CAPABILITY=default asks PyTorch (and us) for the
// baseline kernels (the tests use that to check the baseline variant).
bool use_avx2() {
#ifdef D2KD_MSDA_AVX2
  static const bool yes = [] {
    const char* capability = std::getenv("ATEN_CPU_CAPABILITY");
    if (capability != nullptr && std::strcmp(capability, "default") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
#else
  return false;
#endif
}

template <typename T>
using Kernel = void (*)(const Args<T>&, int64_t, int64_t, Scratch<T>&);

// The kernel for C channels: registers hold whole rows when C is 2, 4 or 8 vectors (16, 32 or
// 64 float channels: the usual head sizes); any other C takes the general loops.
template <typename T, template <typename, int> class Pick>
Kernel<T> pick_kernel(int64_t C) {
  constexpr int64_t W = Vec<T>::lanes;
  switch (C % W == 0 ? C / W : 0) {
    case 2: return Pick<T, 2>::get();
    case 4: return Pick<T, 4>::get();
    case 8: return Pick<T, 8>::get();
    default: return Pick<T, 0>::get();
  }
}
template <typename T, int NV>
struct PickForward {
  static Kernel<T> get() {
#ifdef D2KD_MSDA_AVX2
    if (use_avx2()) return &forward_avx2<T, NV>;
#endif
    return &forward_base<T, NV>;
  }
};
template <typename T, int NV>
struct PickBackward {
  static Kernel<T> get() {
#ifdef D2KD_MSDA_AVX2
    if (use_avx2()) return &backward_avx2<T, NV>;
#endif
    return &backward_base<T, NV>;
  }
};

std::vector<int64_t> level_table(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index) {
  const at::Tensor shapes = spatial_shapes.contiguous(), starts = level_start_index.contiguous();
  const int64_t L = shapes.size(0);
  std::vector<int64_t> levels(3 * L);
  for (int64_t l = 0; l < L; ++l) {
    levels[3 * l] = shapes.data_ptr<int64_t>()[2 * l];
    levels[3 * l + 1] = shapes.data_ptr<int64_t>()[2 * l + 1];
    levels[3 * l + 2] = starts.data_ptr<int64_t>()[l];
  }
  return levels;
}

void check_cpu(const at::Tensor& value, const Dims& d) {
  TORCH_CHECK_TYPE(value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
                   "ms_deform_attn: the CPU kernel takes float32 or float64, got ", value.scalar_type(),
                   " (d2kd.ops.multi_scale_deformable_attention upcasts half precision)");
  // Pixel indices are int32 next to float32.
  TORCH_CHECK_VALUE(d.S < (int64_t{1} << 30), "ms_deform_attn: S=", d.S, " tokens is more than the CPU kernel takes");
}

// Whether every element offset inside value[b] (and grad_value[b]) fits in int32.
template <typename T>
bool small_offsets(const Dims& d) {
  return d.S * d.H * d.C * static_cast<int64_t>(sizeof(T)) < (int64_t{1} << 31) - 1;
}

// Multiply-adds below which a call runs on the calling thread: waking the pool costs more.
constexpr int64_t kSerialWork = 1 << 15;

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights) {
  const Dims d = check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                              at::Tensor(), /*check_levels=*/true);
  check_cpu(value, d);
  const at::Tensor v = value.contiguous(), loc = sampling_locations.contiguous(),
                   attn = attention_weights.contiguous();
  const std::vector<int64_t> levels = level_table(spatial_shapes, level_start_index);
  at::Tensor out = at::empty({d.B, d.Q, d.H * d.C}, value.options());
  const int64_t rows = d.B * d.Q * d.H;
  if (rows == 0 || d.C == 0 || d.P == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    const SampleTable<scalar_t> tab(levels, d.L, d.P);
    const Args<scalar_t> a{v.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
                           nullptr, out.data_ptr<scalar_t>(), nullptr, nullptr,
                           d.B, d.S, d.H, d.C, d.Q, d.L, d.P, 0, small_offsets<scalar_t>(d), &tab};
    const Kernel<scalar_t> kernel = pick_kernel<scalar_t, PickForward>(d.C);
    const int64_t grain = std::max<int64_t>(1, kSerialWork / (4 * tab.LPpad * d.C));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      Scratch<scalar_t> scratch(tab, d.C);
      kernel(a, begin, end, scratch);
    });
  });
  return out;
}

// Heads per backward task: as many as possible (rows of one query are then read in order)
// while there are still at least as many tasks as threads.
int64_t heads_per_task(int64_t B, int64_t H) {
  const int64_t threads = at::get_num_threads();
  int64_t best = 1;
  for (int64_t hp = 1; hp <= H; ++hp) {
    if (H % hp == 0 && B * (H / hp) >= threads) best = hp;
  }
  return best;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  TORCH_CHECK_VALUE(grad_output.defined(), "ms_deform_attn: grad_output is undefined");
  const Dims d = check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                              grad_output, /*check_levels=*/true);
  check_cpu(value, d);
  const at::Tensor v = value.contiguous(), loc = sampling_locations.contiguous(),
                   attn = attention_weights.contiguous(), go = grad_output.contiguous();
  const std::vector<int64_t> levels = level_table(spatial_shapes, level_start_index);
  at::Tensor grad_value = at::zeros_like(v);
  // Every entry of these two is written (by the task that owns its row).
  at::Tensor grad_loc = at::empty_like(loc);
  at::Tensor grad_attn = at::empty_like(attn);
  if (d.B * d.H == 0 || d.Q == 0 || d.C == 0 || d.P == 0) return {grad_value, grad_loc.zero_(), grad_attn.zero_()};
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    const SampleTable<scalar_t> tab(levels, d.L, d.P);
    const int64_t work = d.B * d.H * d.Q * tab.LPpad * 8 * d.C;
    // Few tasks when the call is small: waking threads would cost more than it saves.
    const int64_t hp = work < kSerialWork ? d.H : heads_per_task(d.B, d.H);
    const Args<scalar_t> a{v.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
                           go.data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(),
                           grad_loc.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>(),
                           d.B, d.S, d.H, d.C, d.Q, d.L, d.P, hp, small_offsets<scalar_t>(d), &tab};
    const Kernel<scalar_t> kernel = pick_kernel<scalar_t, PickBackward>(d.C);
    const int64_t tasks = d.B * (d.H / hp);
    at::parallel_for(0, tasks, work < kSerialWork ? tasks : 1, [&](int64_t begin, int64_t end) {
      Scratch<scalar_t> scratch(tab, d.C);
      kernel(a, begin, end, scratch);
    });
  });
  return {grad_value, grad_loc, grad_attn};
}

// Shapes only (FakeTensor / torch.compile tracing).
at::Tensor ms_deform_attn_forward_meta(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights) {
  const Dims d = check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                              at::Tensor(), /*check_levels=*/false);
  return at::empty({d.B, d.Q, d.H * d.C}, value.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_meta(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output,
               /*check_levels=*/false);
  return {at::empty_like(value, at::MemoryFormat::Contiguous),
          at::empty_like(sampling_locations, at::MemoryFormat::Contiguous),
          at::empty_like(attention_weights, at::MemoryFormat::Contiguous)};
}

}  // namespace
}  // namespace msda
}  // namespace d2kd

TORCH_LIBRARY_FRAGMENT(d2kd, m) {
  m.def("ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
        "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def("ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
        "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output) -> (Tensor, Tensor, Tensor)");
}
TORCH_LIBRARY_IMPL(d2kd, CPU, m) {
  m.impl("ms_deform_attn_forward", &d2kd::msda::ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &d2kd::msda::ms_deform_attn_backward_cpu);
}
TORCH_LIBRARY_IMPL(d2kd, Meta, m) {
  m.impl("ms_deform_attn_forward", &d2kd::msda::ms_deform_attn_forward_meta);
  m.impl("ms_deform_attn_backward", &d2kd::msda::ms_deform_attn_backward_meta);
}
