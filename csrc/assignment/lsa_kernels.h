// Inner loops of the assignment solver (lsa_solver.h), each one pass over a cost row.
//
// Every kernel is a template over W, the number of doubles per vector: W = 1 is plain scalar
// code; W > 1 uses GCC/Clang vector extensions (batched_lsa.cpp instantiates W = 4 inside
// functions compiled for AVX2, chosen at run time). Only additions, subtractions, comparisons
// and selections are used, and every result is defined independently of the evaluation order
// (a minimum, a second-smallest value, the first index attaining a minimum), so all W give
// bit-identical results.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__GNUC__) || defined(__clang__)
#define D2KD_LSA_VECTORS 1
// Everything below is inlined into the per-instruction-set entry points of batched_lsa.cpp,
// so that it is compiled for their target.
#define D2KD_LSA_INLINE inline __attribute__((always_inline))
#else
#define D2KD_LSA_INLINE inline
#endif

#if defined(__GNUC__) && !defined(__clang__)
// The vector helpers pass vectors by value but are always inlined: no ABI is involved.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace d2kd {
namespace lsa {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int kUnroll = 4;  // independent accumulators per reduction, to hide compare latency
static_assert(kUnroll == 4, "column_two_min dispatches on 1..4 vectors per block");

// 1 when x is NaN or +-inf (all exponent bits set), else 0. Works on the bit pattern so that
// loops over it vectorise without -ffast-math.
inline uint32_t nonfinite_bit(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
}
inline uint32_t nonfinite_bit(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return static_cast<uint32_t>((bits & 0x7ff0000000000000ull) == 0x7ff0000000000000ull);
}

// True when none of the n values is NaN or +-inf.
template <typename T>
D2KD_LSA_INLINE bool all_finite(const T* p, int64_t n) {
  uint32_t bad = 0;
  for (int64_t k = 0; k < n; ++k) bad |= nonfinite_bit(p[k]);
  return bad == 0;
}

#ifdef D2KD_LSA_VECTORS
// W doubles (or int64, or the floats they are loaded from) per vector. (A template of its
// own: GCC does not apply a dependent vector_size inside the class template that uses it.)
template <int W>
struct VectorTypes {
  typedef double vd __attribute__((vector_size(8 * W)));
  typedef int64_t vi __attribute__((vector_size(8 * W)));
  typedef float vf __attribute__((vector_size(4 * W)));
};

template <int W>
struct Simd {
  using vd = typename VectorTypes<W>::vd;
  using vi = typename VectorTypes<W>::vi;
  using vf = typename VectorTypes<W>::vf;

  template <typename T>
  static D2KD_LSA_INLINE vd load(const T* p) {
    if constexpr (std::is_same_v<T, double>) {
      vd x;
      std::memcpy(&x, p, sizeof(x));
      return x;
    } else {
      vf x;
      std::memcpy(&x, p, sizeof(x));
      return __builtin_convertvector(x, vd);
    }
  }
  static D2KD_LSA_INLINE vi loadi(const int64_t* p) {
    vi x;
    std::memcpy(&x, p, sizeof(x));
    return x;
  }
  template <typename V>
  static D2KD_LSA_INLINE void store(void* p, V x) {
    std::memcpy(p, &x, sizeof(x));
  }
#if defined(__clang__) && __clang_major__ < 13
  static D2KD_LSA_INLINE vd select(vi m, vd a, vd b) { return (vd)((m & (vi)a) | (~m & (vi)b)); }
  static D2KD_LSA_INLINE vi select(vi m, vi a, vi b) { return (m & a) | (~m & b); }
#else
  static D2KD_LSA_INLINE vd select(vi m, vd a, vd b) { return m ? a : b; }  // one blend
  static D2KD_LSA_INLINE vi select(vi m, vi a, vi b) { return m ? a : b; }
#endif
  static D2KD_LSA_INLINE vd min(vd a, vd b) { return select(a < b, a, b); }
  static D2KD_LSA_INLINE vd splat(double x) {
    vd r;
    for (int l = 0; l < W; ++l) r[l] = x;
    return r;
  }
  static D2KD_LSA_INLINE vi splat(int64_t x) {
    vi r;
    for (int l = 0; l < W; ++l) r[l] = x;
    return r;
  }
  static D2KD_LSA_INLINE vd iota(double start) {
    vd r;
    for (int l = 0; l < W; ++l) r[l] = start + l;
    return r;
  }
  static D2KD_LSA_INLINE double hmin(const vd* m, int n) {
    double r = kInf;
    for (int u = 0; u < n; ++u)
      for (int l = 0; l < W; ++l) r = m[u][l] < r ? m[u][l] : r;
    return r;
  }
};
#endif

// Minimum of row[j] - v[j] over j in [begin, end).
template <int W, typename T>
D2KD_LSA_INLINE double min_reduced(const T* row, const double* v, int begin, int end) {
  double mn = kInf;
  int j = begin;
#ifdef D2KD_LSA_VECTORS
  if constexpr (W > 1) {
    using S = Simd<W>;
    typename S::vd m[kUnroll];
    for (int u = 0; u < kUnroll; ++u) m[u] = S::splat(kInf);
    for (; j + kUnroll * W <= end; j += kUnroll * W)
      for (int u = 0; u < kUnroll; ++u) {
        const int jj = j + u * W;
        m[u] = S::min(S::load(row + jj) - S::load(v + jj), m[u]);
      }
    mn = S::hmin(m, kUnroll);
  }
#endif
  for (; j < end; ++j) {
    const double h = static_cast<double>(row[j]) - v[j];
    mn = h < mn ? h : mn;
  }
  return mn;
}

// Smallest reduced cost row[j] - v[j], the first column attaining it, and the second smallest
// value (equal to the smallest when it occurs twice).
struct TwoMin {
  double first;
  int arg;
  double second;
};
template <int W, typename T>
D2KD_LSA_INLINE TwoMin two_min(const T* row, const double* v, int c) {
  double first = kInf, second = kInf;
  int arg = 0;
  int j = 0;
#ifdef D2KD_LSA_VECTORS
  if constexpr (W > 1) {
    using S = Simd<W>;
    using vd = typename S::vd;
    vd m1[kUnroll], m2[kUnroll], idx[kUnroll], col[kUnroll];
    for (int u = 0; u < kUnroll; ++u) {
      m1[u] = m2[u] = S::splat(kInf);
      idx[u] = S::splat(0.0);
      col[u] = S::iota(u * W);
    }
    const vd step = S::splat(static_cast<double>(kUnroll * W));
    for (; j + kUnroll * W <= c; j += kUnroll * W)
      for (int u = 0; u < kUnroll; ++u) {
        const int jj = j + u * W;
        const vd h = S::load(row + jj) - S::load(v + jj);
        const typename S::vi lt = h < m1[u];
        m2[u] = S::min(S::select(lt, m1[u], h), m2[u]);
        m1[u] = S::select(lt, h, m1[u]);
        idx[u] = S::select(lt, col[u], idx[u]);
        col[u] += step;
      }
    // Lanes hold the first occurrence of their minimum: the smallest index among the lanes
    // with the overall minimum is the first occurrence overall. The second smallest is among
    // the lanes' seconds and the other lanes' minima.
    first = S::hmin(m1, kUnroll);
    double best_idx = kInf;
    for (int u = 0; u < kUnroll; ++u)
      for (int l = 0; l < W; ++l)
        if (m1[u][l] == first && idx[u][l] < best_idx) best_idx = idx[u][l];
    for (int u = 0; u < kUnroll; ++u)
      for (int l = 0; l < W; ++l) {
        second = m2[u][l] < second ? m2[u][l] : second;
        if (!(m1[u][l] == first && idx[u][l] == best_idx)) second = m1[u][l] < second ? m1[u][l] : second;
      }
    if (best_idx != kInf) arg = static_cast<int>(best_idx);
  }
#endif
  for (; j < c; ++j) {
    const double h = static_cast<double>(row[j]) - v[j];
    if (h < first) {
      second = first;
      first = h;
      arg = j;
    } else if (h < second) {
      second = h;
    }
  }
  return {first, arg, second};
}

// Start of a shortest-path search from row f: d[j] = row[j] - v[j], pred[j] = f, vs[j] = v[j]
// (vs is v for unscanned columns and -inf for scanned ones); returns min_j d[j].
template <int W, typename T>
D2KD_LSA_INLINE double init_distances(const T* row, const double* v, double* vs, double* d, int64_t* pred,
                                      int64_t f, int c) {
  double mn = kInf;
  int j = 0;
#ifdef D2KD_LSA_VECTORS
  if constexpr (W > 1) {
    using S = Simd<W>;
    using vd = typename S::vd;
    vd m[kUnroll];
    for (int u = 0; u < kUnroll; ++u) m[u] = S::splat(kInf);
    const typename S::vi fv = S::splat(f);
    for (; j + kUnroll * W <= c; j += kUnroll * W)
      for (int u = 0; u < kUnroll; ++u) {
        const int jj = j + u * W;
        const vd vj = S::load(v + jj);
        const vd h = S::load(row + jj) - vj;
        S::store(d + jj, h);
        S::store(vs + jj, vj);
        S::store(pred + jj, fv);
        m[u] = S::min(h, m[u]);
      }
    mn = S::hmin(m, kUnroll);
  }
#endif
  for (; j < c; ++j) {
    const double h = static_cast<double>(row[j]) - v[j];
    d[j] = h;
    vs[j] = v[j];
    pred[j] = f;
    mn = h < mn ? h : mn;
  }
  return mn;
}

// One Dijkstra step through row i, whose scanned column sits at distance row[j1] - v[j1] - u1:
// d[j] = min(d[j], row[j] - vs[j] - u1) for every column, recording i as predecessor where it
// improves. Scanned columns have vs = -inf and d = +inf, so they never change and never win.
// Returns min_j d[j] over the unscanned columns.
template <int W, typename T>
D2KD_LSA_INLINE double relax(const T* row, const double* vs, double u1, double* d, int64_t* pred, int64_t i,
                             int c) {
  double mn = kInf;
  int j = 0;
#ifdef D2KD_LSA_VECTORS
  if constexpr (W > 1) {
    using S = Simd<W>;
    using vd = typename S::vd;
    using vi = typename S::vi;
    vd m[kUnroll];
    for (int u = 0; u < kUnroll; ++u) m[u] = S::splat(kInf);
    const vi iv = S::splat(i);
    const vd uv = S::splat(u1);
    for (; j + kUnroll * W <= c; j += kUnroll * W)
      for (int u = 0; u < kUnroll; ++u) {
        const int jj = j + u * W;
        const vd h = S::load(row + jj) - S::load(vs + jj) - uv;
        const vd dj = S::load(d + jj);
        const vi upd = h < dj;
        const vd nd = S::select(upd, h, dj);
        S::store(d + jj, nd);
        S::store(pred + jj, S::select(upd, iv, S::loadi(pred + jj)));
        m[u] = S::min(nd, m[u]);
      }
    mn = S::hmin(m, kUnroll);
  }
#endif
  for (; j < c; ++j) {
    const double h = static_cast<double>(row[j]) - vs[j] - u1;
    if (h < d[j]) {
      d[j] = h;
      pred[j] = i;
    }
    mn = d[j] < mn ? d[j] : mn;
  }
  return mn;
}

// The column to take among those with d[j] == value: the first free one (col_owner < 0) if
// any, else the first one (JV's rule: ending a path early at a free column pays on matrices
// with many ties). -1 when none.
template <int W>
D2KD_LSA_INLINE int find_value(const double* d, double value, const int32_t* col_owner, int c) {
  int first = -1;
  int j = 0;
#ifdef D2KD_LSA_VECTORS
  if constexpr (W > 1) {
    using S = Simd<W>;
    const typename S::vd val = S::splat(value);
    for (; j + W <= c; j += W) {
      const typename S::vi eq = S::load(d + j) == val;
      bool any = false;
      for (int l = 0; l < W; ++l) any |= eq[l] != 0;
      if (!any) continue;
      for (int l = 0; l < W; ++l) {
        if (eq[l] == 0) continue;
        if (col_owner[j + l] < 0) return j + l;
        if (first < 0) first = j + l;
      }
    }
  }
#endif
  for (; j < c; ++j) {
    if (d[j] != value) continue;
    if (col_owner[j] < 0) return j;
    if (first < 0) first = j;
  }
  return first;
}

// Column minima over the rows of an n x c matrix (JV's column reduction): vmin[j] and the
// first row imin[j] attaining it.
template <int W, typename Rows>
D2KD_LSA_INLINE void column_minima(Rows& rows, int n, int c, double* vmin, int64_t* imin) {
  for (int j = 0; j < c; ++j) {
    vmin[j] = kInf;
    imin[j] = 0;
  }
  for (int i = 0; i < n; ++i) {
    const auto* row = rows.row(i);
    int j = 0;
#ifdef D2KD_LSA_VECTORS
    if constexpr (W > 1) {
      using S = Simd<W>;
      const typename S::vi iv = S::splat(static_cast<int64_t>(i));
      for (; j + W <= c; j += W) {
        const typename S::vd h = S::load(row + j);
        const typename S::vd m = S::load(vmin + j);
        const typename S::vi lt = h < m;
        S::store(vmin + j, S::select(lt, h, m));
        S::store(imin + j, S::select(lt, iv, S::loadi(imin + j)));
      }
    }
#endif
    for (; j < c; ++j) {
      const double h = row[j];
      if (h < vmin[j]) {
        vmin[j] = h;
        imin[j] = i;
      }
    }
  }
}

// column_two_min for K <= 4 columns starting at src + g, in scalar registers.
template <int K, typename T>
D2KD_LSA_INLINE uint32_t column_two_min_scalar(const T* src, int64_t stride, int n, int g, double* first,
                                               double* second, int64_t* arg) {
  double f[K], s[K];
  int64_t a[K];
  uint32_t bad = 0;
  for (int k = 0; k < K; ++k) {
    f[k] = s[k] = kInf;
    a[k] = 0;
  }
  for (int i = 0; i < n; ++i) {
    const T* row = src + static_cast<int64_t>(i) * stride + g;
    for (int k = 0; k < K; ++k) {
      bad |= nonfinite_bit(row[k]);
      const double h = row[k];
      if (h < f[k]) {
        s[k] = f[k];
        f[k] = h;
        a[k] = i;
      } else if (h < s[k]) {
        s[k] = h;
      }
    }
  }
  for (int k = 0; k < K; ++k) {
    first[g + k] = f[k];
    second[g + k] = s[k];
    arg[g + k] = a[k];
  }
  return bad;
}

// For each of the m columns of an n x m row-major matrix (row stride `stride` >= m): the
// smallest value, its first row and the second smallest value. Returns false when a value is
// NaN or infinite. Works on blocks of up to kUnroll * W columns whose minima stay in registers
// over all rows (one cache line of floats per row and block).
template <int W, typename T>
D2KD_LSA_INLINE bool column_two_min(const T* src, int64_t stride, int n, int m, double* first, double* second,
                                    int64_t* arg) {
  uint32_t bad = 0;
#ifdef D2KD_LSA_VECTORS
  if constexpr (W > 1) {
    using S = Simd<W>;
    using vd = typename S::vd;
    using vi = typename S::vi;
    // A block's last vector may extend past column m: its extra lanes read the padding or the
    // next row and are ignored. Rows whose vectors would end past the matrix read from a
    // zero-padded copy instead.
    const int64_t tail_rows = (m + W - 1 + stride - 1) / stride;
    const int safe_rows = static_cast<int>(std::max<int64_t>(0, n - tail_rows));
    auto block = [&](auto vectors, int g, int len) __attribute__((always_inline)) {
      constexpr int U = decltype(vectors)::value;
      vd f[U], s[U];
      vi a[U], acc[U], valid[U];
      for (int u = 0; u < U; ++u) {
        f[u] = s[u] = S::splat(kInf);
        acc[u] = a[u] = S::splat(int64_t{0});
        valid[u] = S::iota(u * W) < S::splat(static_cast<double>(len));
      }
      auto update = [&](const T* row, int i) __attribute__((always_inline)) {
        const vi iv = S::splat(static_cast<int64_t>(i));
        for (int u = 0; u < U; ++u) {
          const vd h = S::load(row + u * W);
          acc[u] |= (vi)(h - h);  // +0.0 (all bits clear) for finite h, NaN otherwise
          const vi lt = h < f[u];
          s[u] = S::min(S::select(lt, f[u], h), s[u]);
          f[u] = S::select(lt, h, f[u]);
          a[u] = S::select(lt, iv, a[u]);
        }
      };
      for (int i = 0; i < safe_rows; ++i) update(src + static_cast<int64_t>(i) * stride + g, i);
      for (int i = safe_rows; i < n; ++i) {
        T tmp[U * W] = {};
        const T* row = src + static_cast<int64_t>(i) * stride + g;
        for (int k = 0; k < len; ++k) tmp[k] = row[k];
        update(tmp, i);
      }
      for (int u = 0; u < U; ++u) {
        for (int l = 0; l < W && u * W + l < len; ++l) {
          first[g + u * W + l] = f[u][l];
          second[g + u * W + l] = s[u][l];
          arg[g + u * W + l] = a[u][l];
        }
        const vi invalid = acc[u] & valid[u];
        for (int l = 0; l < W; ++l) bad |= invalid[l] != 0;
      }
    };
    for (int g = 0; g < m; g += kUnroll * W) {
      const int len = std::min(kUnroll * W, m - g);
      switch ((len + W - 1) / W) {
        case 1: block(std::integral_constant<int, 1>(), g, len); break;
        case 2: block(std::integral_constant<int, 2>(), g, len); break;
        case 3: block(std::integral_constant<int, 3>(), g, len); break;
        default: block(std::integral_constant<int, kUnroll>(), g, len); break;
      }
    }
    return bad == 0;
  }
#endif
  int g = 0;
  for (; g + 4 <= m; g += 4) bad |= column_two_min_scalar<4>(src, stride, n, g, first, second, arg);
  switch (m - g) {
    case 3: bad |= column_two_min_scalar<3>(src, stride, n, g, first, second, arg); break;
    case 2: bad |= column_two_min_scalar<2>(src, stride, n, g, first, second, arg); break;
    case 1: bad |= column_two_min_scalar<1>(src, stride, n, g, first, second, arg); break;
    default: break;
  }
  return bad == 0;
}

}  // namespace lsa
}  // namespace d2kd

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
