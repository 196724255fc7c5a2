// Dense linear sum assignment for one cost matrix: the shortest-augmenting-path method of
// Jonker & Volgenant (Computing 38, 1987, "A shortest augmenting path algorithm for dense and
// sparse linear assignment problems"), generalised to rectangles.
//
// The solver works on an r x c matrix with r <= c (the caller hands over the transpose when the
// input has more rows than columns) and assigns every row. Costs are read in their storage type
// (float or double) and everything derived from them (duals, distances) is kept in double, so a
// float input is solved exactly as its float64 conversion would be.
//
// Phases: (1) initial duals and a partial assignment: JV's column reduction and reduction
// transfer for squares; for rectangles each row takes its cheapest column if still free;
// (2) JV's augmenting row reduction, which settles most remaining rows cheaply; (3) one
// Dijkstra search per row still free, over reduced costs, ending at the first free column
// reached, followed by the dual update and the augmentation along the path. (3) alone is
// exact; (1) and (2) only have to leave a valid dual state:
//   * with v the column duals, each assigned row's column minimises its reduced cost
//     c_ij - v_j (the row dual is that minimum);
//   * rectangles only: free columns keep v_j = 0 and assigned columns have v_j <= 0. That is
//     what makes a free column a valid end of a shortest path when r < c, and why the square's
//     column reduction (which gives free columns arbitrary duals) is not used for rectangles.
// After initialisation, columns never become free again once assigned, and only the duals of
// assigned columns are lowered.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "assignment/lsa_kernels.h"

namespace d2kd {
namespace lsa {

// Rows of a row-major matrix with contiguous columns.
template <typename T>
struct DenseRows {
  using value_type = T;
  const T* data;
  int64_t stride;
  const T* row(int i) const { return data + static_cast<int64_t>(i) * stride; }
};

// Rows of the transpose of an n x r row-major matrix (row g = column g of src, stride
// src_stride), gathered into buf (r x n) the first time the solver asks for them: DETR's
// rectangles usually need only a few of their rows.
template <typename T>
struct TransposedRows {
  using value_type = T;
  const T* src;
  int64_t src_stride;
  int n;
  T* buf;          // r * n
  uint8_t* ready;  // r flags, zeroed by the caller
  const T* row(int g) {
    T* dst = buf + static_cast<int64_t>(g) * n;
    if (!ready[g]) {
      const T* s = src + g;
      for (int k = 0; k < n; ++k) dst[k] = s[k * src_stride];
      ready[g] = 1;
    }
    return dst;
  }
};

// Per-row minima of the costs (duals all zero), when the caller got them for free: the
// smallest cost, its first column, and the second smallest cost (equal to the smallest when it
// occurs twice). They let a rectangle start without touching its rows.
struct RowMinima {
  const double* first;
  const double* second;
  const int64_t* arg;
};

// Scratch memory of one solver; reused across matrices by one thread. W: doubles per vector
// in the kernels (1: scalar code); the caller compiles Solver<W> for a matching target.
template <int W>
class Solver {
 public:
  // Solves the r x c problem (r <= c) whose rows `rows.row(i)` returns (pointers that stay
  // valid during the call); writes the column of each row to col_of_row[0..r). Deterministic:
  // the result depends only on the cost values.
  template <typename Rows>
  D2KD_LSA_INLINE void solve(Rows& rows, int r, int c, int32_t* col_of_row, const RowMinima* minima = nullptr) {
    using T = typename Rows::value_type;
    if (r == 0) return;
    if (r == 1) {  // the first cheapest column
      if (minima != nullptr) {
        col_of_row[0] = static_cast<int32_t>(minima->arg[0]);
        return;
      }
      const T* row = rows.row(0);
      int best = 0;
      for (int j = 1; j < c; ++j)
        if (row[j] < row[best]) best = j;
      col_of_row[0] = best;
      return;
    }
    resize(r, c);
    if (r == c)
      init_square(rows, r);
    else if (minima != nullptr)
      init_greedy(*minima, r, c);
    else
      init_all_free(r, c);
    augmenting_row_reduction(rows, r, c);
    for (int k = 0; k < nfree_; ++k) augment(rows, free_[k], c);
    for (int i = 0; i < r; ++i) col_of_row[i] = x_[i];
  }

 private:
  void resize(int r, int c) {
    if (static_cast<int>(x_.size()) < r) {
      x_.resize(r);
      free_.resize(r);
      matches_.resize(r);
    }
    if (static_cast<int>(y_.size()) < c) {
      y_.resize(c);
      scanned_.resize(c);
      scanned_dist_.resize(c);
      v_.resize(c);
      vs_.resize(c);
      d_.resize(c);
      pred_.resize(c);
    }
    for (int i = 0; i < r; ++i) x_[i] = -1;
    for (int j = 0; j < c; ++j) y_[j] = -1;
  }

  D2KD_LSA_INLINE void assign(int i, int j) {
    x_[i] = j;
    y_[j] = i;
  }

  // JV column reduction + reduction transfer (square only). Leaves the free rows in free_.
  template <typename Rows>
  D2KD_LSA_INLINE void init_square(Rows& rows, int n) {
    using T = typename Rows::value_type;
    double* v = v_.data();
    int64_t* imin = pred_.data();  // pred_ is scratch until augment()
    column_minima<W>(rows, n, n, v, imin);
    for (int i = 0; i < n; ++i) matches_[i] = 0;
    // A row that is the cheapest of several columns keeps the one of smallest dual (JV); the
    // others stay free for now.
    for (int j = n - 1; j >= 0; --j) {
      const int i = static_cast<int>(imin[j]);
      if (matches_[i]++ == 0) {
        assign(i, j);
      } else if (v[j] < v[x_[i]]) {
        y_[x_[i]] = -1;
        assign(i, j);
      }
    }
    // Reduction transfer: a row owning exactly one column raises that column's reduced cost to
    // the row's second smallest, making it less attractive to the free rows.
    nfree_ = 0;
    for (int i = 0; i < n; ++i) {
      if (matches_[i] == 0) {
        free_[nfree_++] = i;
      } else if (matches_[i] == 1) {
        const int j1 = x_[i];
        const T* row = rows.row(i);
        const double mn = std::min(min_reduced<W>(row, v, 0, j1), min_reduced<W>(row, v, j1 + 1, n));
        v[j1] = static_cast<double>(row[j1]) - mn;
      }
    }
  }

  // Rectangle with known row minima: rows in order take their cheapest column when free, its
  // dual lowered to the row's second smallest cost (the transfer above, at no extra pass).
  D2KD_LSA_INLINE void init_greedy(const RowMinima& mins, int r, int c) {
    for (int j = 0; j < c; ++j) v_[j] = 0.0;
    nfree_ = 0;
    for (int i = 0; i < r; ++i) {
      const int j = static_cast<int>(mins.arg[i]);
      if (y_[j] < 0) {
        assign(i, j);
        v_[j] = mins.first[i] - mins.second[i];
      } else {
        free_[nfree_++] = i;
      }
    }
  }

  D2KD_LSA_INLINE void init_all_free(int r, int c) {
    for (int j = 0; j < c; ++j) v_[j] = 0.0;
    for (int i = 0; i < r; ++i) free_[i] = i;
    nfree_ = r;
  }

  // Among the columns j != skip with reduced cost row[j] - v[j] == value: the first free one,
  // else the first one (-1 if none). Only for ties, which generic costs rarely have.
  template <typename T>
  D2KD_LSA_INLINE int find_reduced(const T* row, double value, int skip, int c) const {
    int first = -1;
    for (int j = 0; j < c; ++j) {
      if (j == skip || static_cast<double>(row[j]) - v_[j] != value) continue;
      if (y_[j] < 0) return j;
      if (first < 0) first = j;
    }
    return first;
  }

  // JV augmenting row reduction, two passes over the free rows. A free row takes its cheapest
  // column (a free one among ties) and lowers that column's dual to its second smallest
  // reduced cost; the previous owner is freed and, when the dual moved, handled at once.
  // Rounding can make such chains cycle, and long chains cost more than the exact search they
  // replace, so immediate re-handling has a budget; rows still free go to augment().
  template <typename Rows>
  D2KD_LSA_INLINE void augmenting_row_reduction(Rows& rows, int r, int c) {
    using T = typename Rows::value_type;
    double* v = v_.data();
    int64_t budget = 2 * static_cast<int64_t>(r) + 64;  // measured: more costs more than it saves
    for (int pass = 0; pass < 2 && nfree_ > 0; ++pass) {
      const int prev = nfree_;
      int k = 0;
      nfree_ = 0;
      while (k < prev) {
        const int i = free_[k++];
        const T* row = rows.row(i);
        const TwoMin tm = two_min<W>(row, v, c);
        const double umin = tm.first, usub = tm.second;
        const bool strict = umin < usub;
        int j1 = strict ? tm.arg : find_reduced(row, umin, -1, c);
        int i0 = y_[j1];
        if (strict) {
          v[j1] -= usub - umin;
        } else if (i0 >= 0) {
          // Tie and every cheapest column is taken: take another one, freeing its owner.
          const int j2 = find_reduced(row, usub, j1, c);
          if (j2 >= 0) j1 = j2;
          i0 = y_[j1];
        }
        if (i0 >= 0) x_[i0] = -1;
        assign(i, j1);
        if (i0 >= 0) {
          if (strict && --budget > 0)
            free_[--k] = i0;  // k >= 1 here: slot k - 1 held i
          else
            free_[nfree_++] = i0;
        }
      }
    }
  }

  // Dijkstra search from free row f over reduced costs: repeatedly scan the cheapest unscanned
  // column (a free one among ties); scanning an assigned column relaxes the distances through
  // its row. The first free column reached ends the path. The duals of the scanned columns move
  // by their distance below the path length, which keeps the invariant for the new assignment.
  template <typename Rows>
  D2KD_LSA_INLINE void augment(Rows& rows, int f, int c) {
    double* v = v_.data();
    double* vs = vs_.data();  // v, or -inf once scanned
    double* d = d_.data();    // distance, or +inf once scanned
    int64_t* pred = pred_.data();
    double mn = init_distances<W>(rows.row(f), v, vs, d, pred, f, c);
    int nscanned = 0;
    int end;
    while (true) {
      const int j1 = find_value<W>(d, mn, y_.data(), c);
      if (y_[j1] < 0) {
        end = j1;
        break;
      }
      scanned_[nscanned] = j1;
      scanned_dist_[nscanned++] = mn;
      vs[j1] = -kInf;
      d[j1] = kInf;
      const int i = y_[j1];
      const auto* row = rows.row(i);
      const double u1 = static_cast<double>(row[j1]) - v[j1] - mn;
      mn = relax<W>(row, vs, u1, d, pred, i, c);
    }
    for (int k = 0; k < nscanned; ++k) v[scanned_[k]] += scanned_dist_[k] - mn;
    for (int j = end;;) {
      const int i = static_cast<int>(pred[j]);
      const int next = x_[i];
      assign(i, j);
      if (i == f) break;
      j = next;
    }
  }

  int nfree_ = 0;
  std::vector<int32_t> x_, y_, free_, matches_, scanned_;
  std::vector<double> v_, vs_, d_, scanned_dist_;
  std::vector<int64_t> pred_;
};

}  // namespace lsa
}  // namespace d2kd
