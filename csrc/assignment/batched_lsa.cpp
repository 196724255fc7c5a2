// d2kd::batched_linear_sum_assignment: minimum-cost assignment for a batch of padded cost
// matrices in one call (DETR's Hungarian matching for a whole batch).
//
//   batched_linear_sum_assignment(cost[B, N, Mmax], num_cols[B] int64 | None) -> [B, N] int64
//   assignment_to_indices(assignment[B, N] int64) -> [rows_0, cols_0, rows_1, cols_1, ...]
//
// Matrix b is cost[b, :, :M_b]; entries beyond column M_b are ignored. The result holds the
// column of each row, or -1 for rows left unassigned when N > M_b; exactly min(N, M_b) rows of
// matrix b are assigned and their total cost is minimal (as scipy.optimize's). Non-finite
// costs in a valid region raise ValueError naming the matrix.
//
// Each matrix is solved by lsa::Solver on its smaller side as rows (DETR: ground truths as
// rows, queries as columns, so that each augmentation is one Dijkstra search over the queries).
// Matrices are independent, so the batch is spread over ATen's intra-op threads, largest first,
// taken from a shared counter; results do not depend on the thread count. The number of threads
// follows the estimated work, so that small batches run on the calling thread alone.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <optional>
#include <vector>

#include "assignment/lsa_solver.h"

#if defined(__GNUC__) && !defined(__clang__)
// GCC notes the AVX vector ABI at the end of the file for the always-inlined vector helpers
// of lsa_kernels.h; no vector crosses a real call.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace d2kd {
namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define D2KD_LSA_AVX2 1
#endif

// Estimated work of a matrix with r <= c: one pass over its entries, the searches (which grow
// with r) and a fixed cost; one unit is about 0.15 ns of AVX2 solving on a 2020s server core.
inline double estimated_work(double r, double c) { return r * c * (1.0 + r / 32.0) + 2e4; }

// Each thread used should get at least this much work (about 60 us): below it, waking one
// more thread of the pool costs a good part of what it would save, and on an oversubscribed
// machine the join can wait a whole scheduler time slice for a thread that has not started.
// Small batches (DETR's usual 900 queries x ~10 ground truths) thus run on the calling thread.
constexpr double kWorkPerThread = 4e5;

struct Image {
  int64_t b;
  double work;
};

// Per-thread scratch memory: the solvers (one per vector width) and the transposed rows and
// row minima of the current matrix.
template <typename T>
struct Worker {
  lsa::Solver<1> scalar;
  lsa::Solver<4> vector;
  std::unique_ptr<T[]> transposed;  // uninitialised: rows are gathered on demand
  size_t transposed_size = 0;
  std::vector<uint8_t> ready;
  std::vector<int32_t> cols;
  std::vector<double> first, second;
  std::vector<int64_t> arg;
};

// The valid region cost[:, :m] of one n x mmax matrix, and where its result goes.
template <typename T>
struct Matrix {
  const T* data;
  int64_t n, mmax, m;
  int64_t* out;  // n entries, preset to -1
};

template <typename T>
bool valid_region_finite(const Matrix<T>& a) {
  if (a.m == a.mmax) return lsa::all_finite(a.data, a.n * a.mmax);
  uint32_t bad = 0;
  for (int64_t i = 0; i < a.n; ++i) {
    const T* row = a.data + i * a.mmax;
    for (int64_t j = 0; j < a.m; ++j) bad |= lsa::nonfinite_bit(row[j]);
  }
  return bad == 0;
}

// Solves one matrix with kernels of vector width W; false (nothing written) when a valid
// cost is not finite.
template <int W, typename T>
D2KD_LSA_INLINE bool solve_matrix(Worker<T>& w, lsa::Solver<W>& solver, const Matrix<T>& a) {
  const int n = static_cast<int>(a.n), m = static_cast<int>(a.m);
  if (n == 0 || m == 0 || n <= m) {
    // Rows are the queries, columns contiguous: solve in place.
    if (!valid_region_finite(a)) return false;
    if (n == 0 || m == 0) return true;
    w.cols.resize(n);
    lsa::DenseRows<T> rows{a.data, a.mmax};
    solver.solve(rows, n, m, w.cols.data());
    for (int i = 0; i < n; ++i) a.out[i] = w.cols[i];
    return true;
  }
  // More rows than columns (DETR: queries x ground truths): solve the transpose, ground truths
  // as rows. One pass over the matrix gives each ground truth's cheapest queries, which settle
  // most of them; the solver gathers the rows it needs beyond that.
  w.first.resize(m);
  w.second.resize(m);
  w.arg.resize(m);
  if (!lsa::column_two_min<W>(a.data, a.mmax, n, m, w.first.data(), w.second.data(), w.arg.data())) return false;
  if (w.transposed_size < static_cast<size_t>(m) * n) {
    w.transposed_size = static_cast<size_t>(m) * n;
    w.transposed.reset(new T[w.transposed_size]);
  }
  w.ready.assign(m, 0);
  w.cols.resize(m);
  lsa::TransposedRows<T> rows{a.data, a.mmax, n, w.transposed.get(), w.ready.data()};
  const lsa::RowMinima minima{w.first.data(), w.second.data(), w.arg.data()};
  solver.solve(rows, m, n, w.cols.data(), &minima);
  for (int g = 0; g < m; ++g) a.out[w.cols[g]] = g;
  return true;
}

template <typename T>
bool solve_matrix_scalar(Worker<T>& w, const Matrix<T>& a) {
  return solve_matrix<1>(w, w.scalar, a);
}

#ifdef D2KD_LSA_AVX2
template <typename T>
__attribute__((target("avx2"))) bool solve_matrix_avx2(Worker<T>& w, const Matrix<T>& a) {
  return solve_matrix<4>(w, w.vector, a);
}

bool cpu_has_avx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has;
}
#endif

// AVX2 kernels where the CPU has them, unless D2KD_LSA_SCALAR=1 asks for the portable ones
// (both give identical results; the variable exists for tests and as an escape hatch).
template <typename T>
auto pick_kernel() -> bool (*)(Worker<T>&, const Matrix<T>&) {
  const char* force_scalar = std::getenv("D2KD_LSA_SCALAR");
  if (force_scalar != nullptr && force_scalar[0] == '1') return &solve_matrix_scalar<T>;
#ifdef D2KD_LSA_AVX2
  if (cpu_has_avx2()) return &solve_matrix_avx2<T>;
#endif
  return &solve_matrix_scalar<T>;
}

template <typename T>
void solve_batch(const at::Tensor& cost, const std::vector<int64_t>& num_cols, at::Tensor& out) {
  const int64_t B = cost.size(0), N = cost.size(1), M = cost.size(2);
  const T* data = cost.const_data_ptr<T>();
  int64_t* out_data = out.mutable_data_ptr<int64_t>();
  const auto kernel = pick_kernel<T>();
  auto matrix = [&](int64_t b) { return Matrix<T>{data + b * N * M, N, M, num_cols[b], out_data + b * N}; };

  std::vector<Image> images;
  images.reserve(B);
  double total = 0;
  for (int64_t b = 0; b < B; ++b) {
    const double r = static_cast<double>(std::min(N, num_cols[b])), c = static_cast<double>(std::max(N, num_cols[b]));
    images.push_back({b, estimated_work(r, c)});
    total += images.back().work;
  }
  std::vector<char> bad(B, 0);

  const int64_t threads =
      std::min<int64_t>({static_cast<int64_t>(total / kWorkPerThread), at::get_num_threads(), B});
  if (threads <= 1) {
    Worker<T> worker;
    for (int64_t b = 0; b < B; ++b) bad[b] = !kernel(worker, matrix(b));
  } else {
    // Largest first, handed out one at a time: ragged batches stay balanced. Each matrix is
    // solved independently, so the result does not depend on which thread takes which.
    std::stable_sort(images.begin(), images.end(), [](const Image& x, const Image& y) { return x.work > y.work; });
    std::atomic<int64_t> next{0};
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      Worker<T> worker;
      for (int64_t t = begin; t < end; ++t) {
        for (int64_t k = next.fetch_add(1); k < B; k = next.fetch_add(1)) {
          const int64_t b = images[k].b;
          bad[b] = !kernel(worker, matrix(b));
        }
      }
    });
  }
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(!bad[b], "batched_linear_sum_assignment: cost matrix ", b,
                      " has a non-finite entry (NaN or inf) in its valid region cost[", b, ", :, :",
                      num_cols[b], "]");
  }
}

at::Tensor batched_linear_sum_assignment_cpu(const at::Tensor& cost_in, const std::optional<at::Tensor>& num_cols_in) {
  TORCH_CHECK_VALUE(cost_in.dim() == 3, "batched_linear_sum_assignment: cost must be [B, N, Mmax], got ",
                    cost_in.sizes());
  TORCH_CHECK_VALUE(!cost_in.is_complex(), "batched_linear_sum_assignment: complex costs are not supported");
  const int64_t B = cost_in.size(0), N = cost_in.size(1), M = cost_in.size(2);
  TORCH_CHECK_VALUE(N < (int64_t{1} << 30) && M < (int64_t{1} << 30), "batched_linear_sum_assignment: matrix too large");

  std::vector<int64_t> num_cols(B, M);
  if (num_cols_in.has_value()) {
    const at::Tensor& nc = *num_cols_in;
    TORCH_CHECK_VALUE(nc.dim() == 1 && nc.size(0) == B, "batched_linear_sum_assignment: num_cols must be [B] = [", B,
                      "], got ", nc.sizes());
    TORCH_CHECK_VALUE(!nc.is_floating_point() && !nc.is_complex() && nc.scalar_type() != at::kBool,
                      "batched_linear_sum_assignment: num_cols must hold integers, got ", nc.scalar_type());
    const at::Tensor ncl = nc.to(at::kCPU, at::kLong).contiguous();
    const int64_t* p = ncl.const_data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK_VALUE(p[b] >= 0 && p[b] <= M, "batched_linear_sum_assignment: num_cols[", b, "] = ", p[b],
                        " is outside [0, ", M, "]");
      num_cols[b] = p[b];
    }
  }

  at::Tensor out = at::full({B, N}, -1, cost_in.options().dtype(at::kLong));
  if (B == 0 || N == 0) return out;
  at::Tensor cost = cost_in;
  if (cost.scalar_type() != at::kFloat && cost.scalar_type() != at::kDouble) cost = cost.to(at::kDouble);
  cost = cost.contiguous();
  if (cost.scalar_type() == at::kFloat)
    solve_batch<float>(cost, num_cols, out);
  else
    solve_batch<double>(cost, num_cols, out);
  return out;
}

// [B, N] assignment -> [rows_0, cols_0, rows_1, cols_1, ...]: DETR's per-image index pairs,
// built in one call (a Python loop over the batch costs more than the batched solve).
std::vector<at::Tensor> assignment_to_indices_cpu(const at::Tensor& assignment) {
  TORCH_CHECK_VALUE(assignment.dim() == 2 && assignment.scalar_type() == at::kLong,
                    "assignment_to_indices: expected a [B, N] int64 tensor, got ", assignment.scalar_type(), " ",
                    assignment.sizes());
  const at::Tensor a = assignment.contiguous();
  const int64_t B = a.size(0), N = a.size(1);
  const int64_t* data = a.const_data_ptr<int64_t>();
  std::vector<at::Tensor> out;
  out.reserve(2 * B);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* row = data + b * N;
    int64_t k = 0;
    for (int64_t i = 0; i < N; ++i) k += row[i] >= 0;
    at::Tensor rows = at::empty({k}, a.options()), cols = at::empty({k}, a.options());
    int64_t* r = rows.mutable_data_ptr<int64_t>();
    int64_t* c = cols.mutable_data_ptr<int64_t>();
    for (int64_t i = 0; i < N; ++i) {
      if (row[i] >= 0) {
        *r++ = i;
        *c++ = row[i];
      }
    }
    out.push_back(std::move(rows));
    out.push_back(std::move(cols));
  }
  return out;
}

// Shape-only kernel, for tracing and fake tensors.
at::Tensor batched_linear_sum_assignment_meta(const at::Tensor& cost, const std::optional<at::Tensor>& num_cols) {
  TORCH_CHECK_VALUE(cost.dim() == 3, "batched_linear_sum_assignment: cost must be [B, N, Mmax], got ", cost.sizes());
  return at::empty({cost.size(0), cost.size(1)}, cost.options().dtype(at::kLong));
}

#ifdef WITH_CUDA
// The search is sequential per matrix and DETR matrices are small: solve on the CPU and bring
// the result back to the input's device.
at::Tensor batched_linear_sum_assignment_cuda(const at::Tensor& cost, const std::optional<at::Tensor>& num_cols) {
  std::optional<at::Tensor> nc;
  if (num_cols.has_value()) nc = num_cols->cpu();
  return batched_linear_sum_assignment_cpu(cost.cpu(), nc).to(cost.device());
}
#endif

}  // namespace
}  // namespace d2kd

TORCH_LIBRARY_FRAGMENT(d2kd, m) {
  m.def("batched_linear_sum_assignment(Tensor cost, Tensor? num_cols=None) -> Tensor");
  m.def("assignment_to_indices(Tensor assignment) -> Tensor[]");
}
TORCH_LIBRARY_IMPL(d2kd, CPU, m) {
  m.impl("batched_linear_sum_assignment", &d2kd::batched_linear_sum_assignment_cpu);
  m.impl("assignment_to_indices", &d2kd::assignment_to_indices_cpu);
}
TORCH_LIBRARY_IMPL(d2kd, Meta, m) {
  m.impl("batched_linear_sum_assignment", &d2kd::batched_linear_sum_assignment_meta);
}
#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(d2kd, CUDA, m) {
  m.impl("batched_linear_sum_assignment", &d2kd::batched_linear_sum_assignment_cuda);
}
#endif
