// Public average-pooling entry points: validate, plan, then run the per-ISA kernels over
// (plane, row block) units (forward) or planes (backward) with OpenMP.
#include "im2gemm/avgpool2d.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <new>
#include <vector>

#include "common/checks.hpp"
#include "common/scratch.hpp"
#include "im2gemm/common.hpp"
#include "im2gemm/reference.hpp"
#include "pool/avgpool2d_impl.hpp"

namespace im2gemm::detail {

const char* avg_kernel_name(AvgKernel k) {
  switch (k) {
    case AvgKernel::k2x2_s2_p0: return "k2x2_s2_p0";
    case AvgKernel::k3x3_s2: return "k3x3_s2";
    case AvgKernel::global: return "global";
    case AvgKernel::general: return "general";
  }
  return "?";
}

AvgKernel choose_avg_kernel(const AvgGeom& g) {
  if (g.kh == g.h && g.kw == g.w && g.ph == 0 && g.pw == 0) return AvgKernel::global;
  const bool s2 = g.sh == 2 && g.sw == 2;
  if (s2 && g.kh == 2 && g.kw == 2 && g.ph == 0 && g.pw == 0) return AvgKernel::k2x2_s2_p0;
  if (s2 && g.kh == 3 && g.kw == 3 && g.ph == g.pw && g.ph <= 1) return AvgKernel::k3x3_s2;
  return AvgKernel::general;
}

// Ring rows: [margin zeros][OW values][zeros up to pitch]; the backward loops read up to
// KW - 1 columns left of column 0 and a vector (16 lanes, at most W + PW + 32 columns) right
// of the last one.
std::int64_t avg_backward_row_margin(const AvgGeom& g) { return (g.kw + 16) & ~std::int64_t{15}; }
std::int64_t avg_backward_row_pitch(const AvgGeom& g) {
  return avg_backward_row_margin(g) + ((g.w + g.pw + g.ow + 48) & ~std::int64_t{15});
}
std::int64_t avg_backward_scratch_floats(const AvgGeom& g) {
  return (g.kh + g.sh - 1) / g.sh * avg_backward_row_pitch(g);
}

namespace {

AvgRowsFn avg_rows_fn(PoolIsa isa) {
  switch (isa) {
    case PoolIsa::avx512: return &avgpool2d_forward_rows_avx512;
    case PoolIsa::avx2: return &avgpool2d_forward_rows_avx2;
    case PoolIsa::scalar: break;
  }
  return &avgpool2d_forward_rows_scalar;
}

AvgPlaneBwdFn avg_bwd_fn(PoolIsa isa) {
  switch (isa) {
    case PoolIsa::avx512: return &avgpool2d_backward_plane_avx512;
    case PoolIsa::avx2: return &avgpool2d_backward_plane_avx2;
    case PoolIsa::scalar: break;
  }
  return &avgpool2d_backward_plane_scalar;
}

// Threads, units and chunks as in max pooling (maxpool2d.cpp): each thread gets at least
// kMinBytesPerThread input (or dx) bytes, and units are handed out dynamically at least
// kMinBytesPerChunk at a time.
constexpr std::int64_t kUnitsPerThread = 4;
constexpr std::int64_t kMinBytesPerThread = std::int64_t{256} << 10;
constexpr std::int64_t kMinBytesPerChunk = std::int64_t{64} << 10;
// Largest per-thread backward scratch and ring: beyond them (huge kernels), the reference's
// zero + scatter runs per plane.
constexpr std::int64_t kScratchMaxBytes = std::int64_t{1} << 20;
constexpr std::int64_t kMaxRingRows = 64;
// A divisor row_count * col_count is exact in float up to 2^24: larger kernels run the
// reference loops.
constexpr std::int64_t kMaxVectorKernelArea = std::int64_t{1} << 24;

int chunk_units(std::int64_t unit_bytes) {
  const std::int64_t units = kMinBytesPerChunk / std::max<std::int64_t>(1, unit_bytes);
  return static_cast<int>(std::clamp<std::int64_t>(units, 1, 1 << 20));
}

int threads_for(std::int64_t bytes, int threads) {
  const std::int64_t useful = std::max<std::int64_t>(1, bytes / kMinBytesPerThread);
  return static_cast<int>(std::min<std::int64_t>(threads, useful));
}

// Geometry and the column counts of the divisors (PyTorch's rule, see avgpool2d.hpp).
struct AvgPlan {
  AvgGeom g;
  std::vector<float> col_count;
  std::vector<std::int64_t> row_lo, row_hi;
  AvgKernel kernel;
  std::int64_t planes;
  int threads;
  bool reference;  // huge kernel: the reference loops
};

AvgPlan plan_common(const AvgPool2dShape& s, int threads) {
  AvgPlan p;
  const std::int64_t OW = s.out_width();
  p.col_count.resize(static_cast<std::size_t>(OW));
  for (std::int64_t ow = 0; ow < OW; ++ow) {
    const std::int64_t c0 = ow * s.stride_width - s.pad_width;
    const std::int64_t c1 = std::min(c0 + s.kernel_width, s.in_width + s.pad_width);
    const std::int64_t n =
        s.count_include_pad ? c1 - c0 : std::min(c1, s.in_width) - std::max<std::int64_t>(c0, 0);
    p.col_count[static_cast<std::size_t>(ow)] = static_cast<float>(n);
  }
  const std::int64_t H = s.in_height, OH = s.out_height();
  p.row_lo.resize(static_cast<std::size_t>(H));
  p.row_hi.resize(static_cast<std::size_t>(H));
  for (std::int64_t ih = 0; ih < H; ++ih) {
    // oh*SH - PH <= ih < oh*SH - PH + KH, 0 <= oh < OH
    const std::int64_t lo = ih + s.pad_height - s.kernel_height + 1;
    p.row_lo[static_cast<std::size_t>(ih)] = lo <= 0 ? 0
                                                     : (lo + s.stride_height - 1) / s.stride_height;
    p.row_hi[static_cast<std::size_t>(ih)] =
        std::min(OH - 1, (ih + s.pad_height) / s.stride_height);
  }
  p.g = AvgGeom{s.in_height,
                s.in_width,
                OH,
                OW,
                s.kernel_height,
                s.kernel_width,
                s.stride_height,
                s.stride_width,
                s.pad_height,
                s.pad_width,
                s.count_include_pad,
                p.col_count.data(),
                p.row_lo.data(),
                p.row_hi.data()};
  p.kernel = choose_avg_kernel(p.g);
  p.planes = s.batch * s.channels;
  p.threads = threads_for(4 * s.x_size(), threads);
  p.reference = s.kernel_height * s.kernel_width > kMaxVectorKernelArea;
  return p;
}

float* scratch_for_all(bool want, std::int64_t bytes, std::atomic<bool>& failed) {
  if (!want) return nullptr;
  float* buf = thread_scratch(static_cast<std::size_t>(bytes));
  if (buf == nullptr) failed.store(true);
#pragma omp barrier
  return buf;
}

}  // namespace

}  // namespace im2gemm::detail

namespace im2gemm {

void avgpool2d_forward(const AvgPool2dShape& s, std::span<const float> x, std::span<float> y) {
  detail::check_avgpool2d_forward(s, x, y);
  detail::AvgPlan p = detail::plan_common(s, num_threads());
  if (p.reference) return reference::avgpool2d_forward(s, x, y);
  const detail::AvgRowsFn rows = detail::avg_rows_fn(detail::pool_isa_active());
  const detail::AvgGeom& g = p.g;
  // Units: planes, or row blocks of planes when there are fewer planes than the threads want.
  const std::int64_t want = detail::kUnitsPerThread * p.threads;
  std::int64_t blocks = 1;
  if (p.kernel != detail::AvgKernel::global && p.planes < want) {
    blocks = std::min(g.oh, (want + p.planes - 1) / p.planes);
  }
  const std::int64_t rows_per_block = (g.oh + blocks - 1) / blocks;
  blocks = (g.oh + rows_per_block - 1) / rows_per_block;
  const std::int64_t units = p.planes * blocks;
  const int chunk = detail::chunk_units(g.h * g.w * 4 / blocks);
  const std::int64_t HW = g.h * g.w, OHW = g.oh * g.ow;
  const float* xd = x.data();
  float* yd = y.data();
#pragma omp parallel for num_threads(p.threads) schedule(dynamic, chunk)
  for (std::int64_t u = 0; u < units; ++u) {
    const std::int64_t plane = u / blocks, block = u % blocks;
    const std::int64_t oh0 = block * rows_per_block;
    const std::int64_t oh1 = std::min(g.oh, oh0 + rows_per_block);
    rows(p.kernel, g, xd + plane * HW, yd + plane * OHW + oh0 * g.ow, oh0, oh1);
  }
}

void avgpool2d_backward(const AvgPool2dShape& s, std::span<const float> dy, std::span<float> dx) {
  detail::check_avgpool2d_backward(s, dy, dx);
  detail::AvgPlan p = detail::plan_common(s, num_threads());
  const detail::AvgGeom& g = p.g;
  const std::int64_t ring = (g.kh + g.sh - 1) / g.sh;
  const std::int64_t scratch_bytes = 4 * detail::avg_backward_scratch_floats(g);
  if (p.reference || (p.kernel != detail::AvgKernel::global &&
                      (ring > detail::kMaxRingRows || scratch_bytes > detail::kScratchMaxBytes))) {
    return reference::avgpool2d_backward(s, dy, dx);
  }
  const detail::AvgPlaneBwdFn plane_fn = detail::avg_bwd_fn(detail::pool_isa_active());
  const bool need_scratch = p.kernel != detail::AvgKernel::global;
  const std::int64_t HW = g.h * g.w, OHW = g.oh * g.ow;
  const int chunk = detail::chunk_units(4 * HW);
  const float* gd = dy.data();
  float* d = dx.data();
  std::atomic<bool> failed{false};
#pragma omp parallel num_threads(p.threads)
  {
    float* buf = detail::scratch_for_all(need_scratch, scratch_bytes, failed);
    // The ring rows' margins are read as zeros and never written (avg_g_row): zeroed once.
    if (buf != nullptr) std::memset(buf, 0, static_cast<std::size_t>(scratch_bytes));
    const std::int64_t todo = failed.load() ? 0 : p.planes;  // the same for every thread
#pragma omp for schedule(dynamic, chunk)
    for (std::int64_t plane = 0; plane < todo; ++plane) {
      plane_fn(p.kernel, g, gd + plane * OHW, d + plane * HW, buf);
    }
  }
  if (failed.load()) throw std::bad_alloc();
}

}  // namespace im2gemm
