// Internal: the max-pooling plan, the ISA selection and the per-ISA forward kernels.
// The kernels compute exactly what reference::maxpool2d_forward computes (bitwise values and
// argmax); the ISA only changes how many neighbouring outputs are processed at once.
#pragma once

#include <cstdint>

namespace im2gemm::detail {

/// Instruction sets of the forward kernels, in increasing order.
enum class PoolIsa : int { scalar = 0, avx2 = 1, avx512 = 2 };

const char* pool_isa_name(PoolIsa isa);
/// The best ISA this CPU and OS support (cached; __builtin_cpu_supports).
PoolIsa pool_isa_supported();
/// The ISA the forward kernels use now: min(cap, supported). The cap starts from the
/// environment variable IM2GEMM_POOL_ISA (scalar | avx2 | avx512; unset = no cap).
PoolIsa pool_isa_active();
/// Caps the ISA (tests force each path with it). Process-wide, not meant for concurrent use.
void set_pool_isa_cap(PoolIsa cap);

/// Which forward loop a shape runs; each dedicated kernel is valid exactly for its shape.
enum class PoolKernel : int {
  k2x2_s2_p0,  ///< kernel 2x2, stride 2x2, pad 0x0
  k3x3_s2_p1,  ///< kernel 3x3, stride 2x2, pad 1x1
  k3x3_s2_p0,  ///< kernel 3x3, stride 2x2, pad 0x0
  general,     ///< any kernel, stride and padding
};
const char* pool_kernel_name(PoolKernel k);

/// Geometry of one (n, c) plane, read-only in the kernels.
struct PoolGeom {
  std::int64_t h, w, oh, ow;  ///< input and output plane sizes
  std::int64_t kh, kw, sh, sw, ph, pw;
};

/// The kernel a geometry runs (pure function of the shape).
PoolKernel choose_pool_kernel(const PoolGeom& g);

/// Forward of output rows [oh_begin, oh_end) of one plane: x is the plane's input [H][W];
/// y and argmax point at output row oh_begin and receive (oh_end - oh_begin) rows of OW.
using PoolRowsFn = void (*)(PoolKernel k, const PoolGeom& g, const float* x, float* y,
                            std::int32_t* argmax, std::int64_t oh_begin, std::int64_t oh_end);

void maxpool2d_forward_rows_scalar(PoolKernel k, const PoolGeom& g, const float* x, float* y,
                                   std::int32_t* argmax, std::int64_t oh_begin,
                                   std::int64_t oh_end);
void maxpool2d_forward_rows_avx2(PoolKernel k, const PoolGeom& g, const float* x, float* y,
                                 std::int32_t* argmax, std::int64_t oh_begin,
                                 std::int64_t oh_end);
void maxpool2d_forward_rows_avx512(PoolKernel k, const PoolGeom& g, const float* x, float* y,
                                   std::int32_t* argmax, std::int64_t oh_begin,
                                   std::int64_t oh_end);

}  // namespace im2gemm::detail
