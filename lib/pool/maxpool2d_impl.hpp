// Internal: the max-pooling plan, the ISA selection and the per-ISA kernels (forward, and the
// one-pass backward of the 2x2 stride-2 window). The kernels compute exactly what the reference
// loops compute (bitwise values, argmax and dx); the ISA only changes how many neighbouring
// outputs are processed at once.
#pragma once

#include <cstdint>
#include <span>

#include "common/isa.hpp"
#include "im2gemm/common.hpp"
#include "im2gemm/maxpool2d.hpp"
#include "pool/pool_quads.hpp"

namespace im2gemm::detail {

/// Instruction sets of the kernels: the library's one ISA enum (common/isa.hpp).
using PoolIsa = Isa;

inline const char* pool_isa_name(PoolIsa isa) { return isa_name(isa); }
/// The best ISA this CPU and OS support (common/isa.hpp's probe).
PoolIsa pool_isa_supported();
/// The ISA the kernels use now: min(cap, supported). The cap starts from the library-wide
/// IM2GEMM_ISA (scalar | avx2 | avx512; unset = no cap; anything else: std::invalid_argument).
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
                                 std::int32_t* argmax, std::int64_t oh_begin, std::int64_t oh_end);
void maxpool2d_forward_rows_avx512(PoolKernel k, const PoolGeom& g, const float* x, float* y,
                                   std::int32_t* argmax, std::int64_t oh_begin,
                                   std::int64_t oh_end);

/// One-pass backward of the 2x2 stride-2 pad-0 window (k2x2_s2_p0) over output rows
/// [oh_begin, oh_end) of one plane: dy and argmax point at the plane's [OH][OW], dx at its
/// [H][W]. Overwrites dx rows [2*oh_begin, 2*oh_end) (and the odd last row H-1 when oh_end ==
/// OH) with the reference's result, writing each cell once, and returns true; returns false,
/// with those rows partly written, if some window's argmax is not one of its own four cells
/// (the caller then zeroes the plane and scatters). stream_buf: nullptr for ordinary stores;
/// else 2*W + 16 floats of this thread's scratch, and dx is written with non-temporal stores
/// (ordinary ones for the partial 64-byte lines at both ends): fence before reading dx.
/// The scalar path has none: zero + scatter.
using PoolBackward2x2Fn = bool (*)(const PoolGeom& g, const float* dy, const std::int32_t* argmax,
                                   float* dx, std::int64_t oh_begin, std::int64_t oh_end,
                                   float* stream_buf);

bool maxpool2d_backward_2x2_s2_p0_rows_avx2(const PoolGeom& g, const float* dy,
                                            const std::int32_t* argmax, float* dx,
                                            std::int64_t oh_begin, std::int64_t oh_end,
                                            float* stream_buf);
bool maxpool2d_backward_2x2_s2_p0_rows_avx512(const PoolGeom& g, const float* dy,
                                              const std::int32_t* argmax, float* dx,
                                              std::int64_t oh_begin, std::int64_t oh_end,
                                              float* stream_buf);

/// The one-pass 2x2 backward kernel of an ISA, or nullptr (scalar).
PoolBackward2x2Fn pool_backward_2x2_kernel(PoolIsa isa);

/// How maxpool2d_backward runs a (validated) shape: a pure function of the shape, the thread
/// count and pool_isa_active(). Each plane is owned by one thread, which overwrites it with the
/// one-pass kernel (k2x2_s2_p0 on a vector ISA; zero + scatter if the kernel rejects the
/// plane's argmax) or zeroes it and adds dy at each argmax in output order.
struct PoolBackwardPlan {
  PoolGeom g;
  std::int64_t planes;
  int threads;
  int planes_per_chunk;        ///< dynamic scheduling grain
  PoolBackward2x2Fn one_pass;  ///< nullptr: zero + scatter for every plane
  /// Large dx, written with non-temporal stores: directly by the one-pass kernel (through a
  /// row-pair buffer), else each plane is scattered in scratch and copied out.
  bool stream;
  std::int64_t scratch_floats;  ///< per thread, when streaming
};
PoolBackwardPlan plan_maxpool2d_backward(const MaxPool2dShape& s, int threads);

/// maxpool2d_backward of dy * act'(y), where y is the forward's output and act the activation
/// whose output the pooling's input is (the exact dE/d(pre-activation) of the layer before:
/// each window's max is its argmax cell's input). argmax MUST be what maxpool2d_forward wrote
/// for this shape: it is not scanned (the caller owns it; see MaxPool2dLayer). For planes of
/// up to 16 Ki outputs, dy * act'(y) is formed per plane in the thread's scratch, inside the
/// parallel pass, instead of in a whole-tensor pass before it. Shapes, sizes, overlaps and
/// act are checked (std::invalid_argument, dx untouched); std::bad_alloc as in
/// maxpool2d_backward. dx is bitwise what maxpool2d_backward gives for the scaled dy.
void maxpool2d_backward_through_activation(const MaxPool2dShape& s, std::span<const float> dy,
                                           std::span<const float> y, Activation act,
                                           std::span<const std::int32_t> argmax,
                                           std::span<float> dx);

}  // namespace im2gemm::detail
