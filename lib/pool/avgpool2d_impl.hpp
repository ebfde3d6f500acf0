// Internal: the average-pooling plan and the per-ISA kernels (forward rows, backward planes).
// The kernels compute exactly what the reference loops compute, bit for bit: every window sum
// runs in row-major order from zero, every dx cell adds its windows' dy / divisor in output
// order from zero, and the same float division is used. The one exception is the global
// forward (one window covering the whole plane), which sums with several vector accumulators:
// within float rounding of the reference (exact on small integers).
#pragma once

#include <cstdint>

#include "im2gemm/avgpool2d.hpp"
#include "pool/maxpool2d_impl.hpp"  // PoolIsa, pool_isa_active()
#include "pool/pool_quads.hpp"

namespace im2gemm::detail {

/// Which loops a shape runs; each dedicated variant is valid exactly for its shape.
enum class AvgKernel : int {
  k2x2_s2_p0,  ///< kernel 2x2, stride 2x2, pad 0x0
  k3x3_s2,     ///< kernel 3x3, stride 2x2, pad 0x0 or 1x1
  global,      ///< kernel = input, pad 0: one output per plane
  general,     ///< any kernel, stride and padding
};
const char* avg_kernel_name(AvgKernel k);

/// Geometry of one (n, c) plane and the divisors, read-only in the kernels.
struct AvgGeom {
  std::int64_t h, w, oh, ow;  ///< input and output plane sizes
  std::int64_t kh, kw, sh, sw, ph, pw;
  bool include_pad;
  /// col_count[ow]: the divisor's column count of output column ow (ow in [0, OW)), as a
  /// float; the row count of output row oh comes from row_count(). A divisor is the product
  /// of the two, exact in float because kh*kw < 2^24 on the vector paths.
  const float* col_count;
  /// Backward only: dx row ih lies in the windows of output rows [row_lo[ih], row_hi[ih]]
  /// (row_lo > row_hi: none), computed once per call (no divisions in the plane loops).
  const std::int64_t* row_lo;
  const std::int64_t* row_hi;
  std::int64_t row_count(std::int64_t oh_) const {
    const std::int64_t r0 = oh_ * sh - ph;
    const std::int64_t r1 = r0 + kh < h + ph ? r0 + kh : h + ph;
    if (include_pad) return r1 - r0;
    return (r1 < h ? r1 : h) - (r0 > 0 ? r0 : 0);
  }
};

/// The variant a geometry runs (pure function of the shape).
AvgKernel choose_avg_kernel(const AvgGeom& g);

/// Forward of output rows [oh_begin, oh_end) of one plane: x is the plane's input [H][W],
/// y points at output row oh_begin.
using AvgRowsFn = void (*)(AvgKernel k, const AvgGeom& g, const float* x, float* y,
                           std::int64_t oh_begin, std::int64_t oh_end);
/// Backward of one plane: dy [OH][OW] -> dx [H][W] (every cell written once). buf: this
/// thread's scratch of avg_backward_scratch_floats(g) floats, zeroed by the caller before its
/// first plane; the plane functions write only the value columns of its rows, so the margins
/// stay zero for the next plane.
using AvgPlaneBwdFn = void (*)(AvgKernel k, const AvgGeom& g, const float* dy, float* dx,
                               float* buf);

/// Scratch floats a backward plane needs (the dy / divisor rows of the windows covering one
/// input row, with zero margins).
std::int64_t avg_backward_scratch_floats(const AvgGeom& g);
/// Row pitch of that scratch and where output column 0 sits in a row.
std::int64_t avg_backward_row_pitch(const AvgGeom& g);
std::int64_t avg_backward_row_margin(const AvgGeom& g);

#define IM2GEMM_AVG_DECLARE(isa)                                                                 \
  void avgpool2d_forward_rows_##isa(AvgKernel k, const AvgGeom& g, const float* x, float* y,     \
                                    std::int64_t oh_begin, std::int64_t oh_end);                 \
  void avgpool2d_backward_plane_##isa(AvgKernel k, const AvgGeom& g, const float* dy, float* dx, \
                                      float* buf);
IM2GEMM_AVG_DECLARE(scalar)
IM2GEMM_AVG_DECLARE(avx2)
IM2GEMM_AVG_DECLARE(avx512)
#undef IM2GEMM_AVG_DECLARE

}  // namespace im2gemm::detail
