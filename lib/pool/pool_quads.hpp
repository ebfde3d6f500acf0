// Internal: the 2x2 stride-2 pad-0 pooling window on short rows of whole quads, for max and
// average pooling alike. A quad is 4 neighbouring outputs of one row; with OW % 4 == 0 the
// rows of a block are one flat run of quads, taken two at a time into one 8-lane vector, so
// that a row of 12 outputs costs one and a half vectors and no per-row set-up (in the row
// loops, lenet_pool's 12-wide rows ran at 0.32-0.42 of a memcpy of the pass's bytes).
#pragma once

#include <cstdint>

namespace im2gemm::detail {

/// Widest rows taken as quads: wider rows amortise the row loops' set-up.
constexpr std::int64_t kQuadMaxOW = 32;

/// Output rows [oh_begin, oh_end) of an h x w plane pooled 2x2 stride 2 pad 0 into ow columns
/// run as quads: rows of whole quads, every window whole, at least two quads.
inline bool quads_apply(std::int64_t h, std::int64_t w, std::int64_t ow, std::int64_t oh_begin,
                        std::int64_t oh_end) {
  return ow % 4 == 0 && ow <= kQuadMaxOW && 2 * ow <= w && 2 * oh_end <= h &&
         (oh_end - oh_begin) * (ow / 4) >= 2;
}

/// A pooling kernel type with the two-quad load: V::quads(pa, pb, even, odd) puts lanes
/// [0, N/2) from pa and [N/2, N) from pb, floats 2*i in `even` and 2*i + 1 in `odd`.
template <class V>
concept HasQuads = requires(const float* p, typename V::F& f) {
  V::quads(p, p, f, f);
};

/// A pooling kernel type with stride-2 loads whose lanes come in a fixed order of its choosing
/// (cheaper than output order: AVX2 saves a lane-crossing permute per load): V::load_s2(p) and
/// V::load_n_s2(p, n) are load<2>(p, 2) and load_n<2>(p, 2, n, m) before V::s2_order, which
/// puts a vector (floats, or indices where V has them) in that order back in output order.
/// Lane-wise work (max, sums) can run in that order and be reordered once at the end.
template <class V>
concept HasS2Order = requires(const float* p, typename V::F f) {
  f = V::load_s2(p);
  f = V::load_n_s2(p, 1);
  f = V::s2_order(f);
};

/// Calls f(a, b, out) for each vector of two quads over output rows [oh_begin, oh_end) of a
/// plane of width w: a and b are the input indices of the two quads' top-left cells (quad
/// q: output row oh_begin + q / (ow/4), columns from 4 * (q % (ow/4)), input cell 2*oh*w +
/// 2*ow), out the block's output index of the first quad's first output. An odd quad count
/// ends with a vector that overlaps the one before it (the same outputs written again).
/// Callers' f capture by value: f is not always inlined, and a store through a by-reference
/// capture makes the compiler reload every captured pointer after it (lenet_pool's average
/// backward ran 11% faster, its forward 13%, max forward 6%).
template <class F>
inline void for_each_quad_pair(std::int64_t w, std::int64_t ow, std::int64_t oh_begin,
                               std::int64_t oh_end, F&& f) {
  const std::int64_t qpr = ow / 4, nq = (oh_end - oh_begin) * qpr;
  auto cell = [&](std::int64_t q) {
    return static_cast<std::uint32_t>(2 * (oh_begin + q / qpr) * w + 8 * (q % qpr));
  };
  std::int64_t oh = oh_begin, col = 0;  // quad q's output row and first column
  auto next = [&] {
    const auto c = static_cast<std::uint32_t>(2 * oh * w + 2 * col);
    col += 4;
    if (col == ow) {
      col = 0;
      ++oh;
    }
    return c;
  };
  std::int64_t q = 0;
  for (; q + 2 <= nq; q += 2) {
    const std::uint32_t a = next();
    const std::uint32_t b = next();
    f(a, b, 4 * q);
  }
  if (q < nq) f(cell(nq - 2), cell(nq - 1), 4 * (nq - 2));
}

}  // namespace im2gemm::detail
