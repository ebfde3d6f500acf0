// Public max-pooling entry points: validate, plan, then run the per-ISA forward kernels or the
// backward scatter over (n, c) planes with OpenMP.
#include "im2gemm/maxpool2d.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string_view>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "common/activation_impl.hpp"
#include "common/checks.hpp"
#include "common/isa.hpp"
#include "common/scratch.hpp"
#include "im2gemm/common.hpp"
#include "pool/maxpool2d_impl.hpp"

namespace im2gemm::detail {

namespace {

// The library-wide cap (IM2GEMM_ISA; std::invalid_argument on a bad value).
PoolIsa cap_from_env() { return isa_env_cap(); }

std::atomic<int> g_isa_cap{-1};  // -1: not read from the environment yet

}  // namespace

const char* pool_kernel_name(PoolKernel k) {
  switch (k) {
    case PoolKernel::k2x2_s2_p0: return "k2x2_s2_p0";
    case PoolKernel::k3x3_s2_p1: return "k3x3_s2_p1";
    case PoolKernel::k3x3_s2_p0: return "k3x3_s2_p0";
    case PoolKernel::general: return "general";
  }
  return "?";
}

PoolIsa pool_isa_supported() { return isa_supported(); }

void set_pool_isa_cap(PoolIsa cap) { g_isa_cap.store(static_cast<int>(cap)); }

PoolIsa pool_isa_active() {
  int cap = g_isa_cap.load(std::memory_order_relaxed);
  if (cap < 0) {
    cap = static_cast<int>(cap_from_env());
    int expected = -1;
    if (!g_isa_cap.compare_exchange_strong(expected, cap)) cap = expected;
  }
  return static_cast<PoolIsa>(std::min(cap, static_cast<int>(pool_isa_supported())));
}

PoolKernel choose_pool_kernel(const PoolGeom& g) {
  const bool s2 = g.sh == 2 && g.sw == 2;
  if (s2 && g.kh == 2 && g.kw == 2 && g.ph == 0 && g.pw == 0) return PoolKernel::k2x2_s2_p0;
  if (s2 && g.kh == 3 && g.kw == 3 && g.ph == 1 && g.pw == 1) return PoolKernel::k3x3_s2_p1;
  if (s2 && g.kh == 3 && g.kw == 3 && g.ph == 0 && g.pw == 0) return PoolKernel::k3x3_s2_p0;
  return PoolKernel::general;
}

namespace {

PoolRowsFn rows_fn(PoolIsa isa) {
  switch (isa) {
    case PoolIsa::avx512: return &maxpool2d_forward_rows_avx512;
    case PoolIsa::avx2: return &maxpool2d_forward_rows_avx2;
    case PoolIsa::scalar: break;
  }
  return &maxpool2d_forward_rows_scalar;
}

PoolGeom geometry(const MaxPool2dShape& s) {
  return PoolGeom{s.in_height,    s.in_width,      s.out_height(), s.out_width(), s.kernel_height,
                  s.kernel_width, s.stride_height, s.stride_width, s.pad_height,  s.pad_width};
}

// Forward work is split into (plane, block of output rows) units; outputs of different units
// never overlap. Planes alone suffice when there are several per thread; otherwise each plane
// is cut into row blocks so that batch 1 with few channels still uses every thread.
constexpr std::int64_t kUnitsPerThread = 4;
// Each thread gets at least this many input bytes: below it, waking a thread costs more than
// it saves (and a busy core stalls the whole team).
constexpr std::int64_t kMinBytesPerThread = std::int64_t{256} << 10;

// Units (planes or row blocks) are handed out dynamically, at least this many input bytes at
// a time: on a shared machine a thread that loses its core then holds up one chunk, not half
// of the work. Which thread computes a unit never changes its bits.
constexpr std::int64_t kMinBytesPerChunk = std::int64_t{64} << 10;

int chunk_units(std::int64_t unit_bytes) {
  const std::int64_t units = kMinBytesPerChunk / std::max<std::int64_t>(1, unit_bytes);
  return static_cast<int>(std::clamp<std::int64_t>(units, 1, 1 << 20));
}

int threads_for(std::int64_t input_bytes, int threads) {
  const std::int64_t useful = std::max<std::int64_t>(1, input_bytes / kMinBytesPerThread);
  return static_cast<int>(std::min<std::int64_t>(threads, useful));
}

// Outputs larger than this bypass the caches: each unit is computed into per-thread scratch
// and copied out with non-temporal stores, which saves the read-for-ownership of every output
// line (a third of the forward traffic, half of the backward's on dx). Smaller outputs stay
// in cache for the next layer; measured here, streaming 13-26 MB outputs (resnet_pool) was
// 20% slower than caching them, streaming the 51-103 MB ones of vgg_pool1 faster.
constexpr std::int64_t kStreamMinBytes = std::int64_t{32} << 20;
// Largest per-thread scratch (bytes): well inside the 1-2 MiB L2 of current x86 cores.
constexpr std::int64_t kScratchMaxBytes = std::int64_t{1} << 20;
// Forward scratch (one block of y and argmax) is kept to half of it.
constexpr std::int64_t kForwardScratchMaxBytes = kScratchMaxBytes / 2;

struct ForwardPlan {
  PoolGeom g;
  PoolKernel kernel;
  PoolRowsFn rows;
  std::int64_t planes, blocks_per_plane, rows_per_block;
  int threads;
  bool stream;                   // compute into scratch, stream out
  std::int64_t units_per_chunk;  // dynamic scheduling grain
};

ForwardPlan plan_forward(const MaxPool2dShape& s, int threads) {
  ForwardPlan p{};
  p.g = geometry(s);
  p.kernel = choose_pool_kernel(p.g);
  p.rows = rows_fn(pool_isa_active());
  p.planes = s.batch * s.channels;
  p.threads = threads_for(4 * s.x_size(), threads);
  const std::int64_t want = kUnitsPerThread * p.threads;
  p.blocks_per_plane = 1;
  if (p.planes < want) p.blocks_per_plane = std::min(p.g.oh, (want + p.planes - 1) / p.planes);
  p.rows_per_block = (p.g.oh + p.blocks_per_plane - 1) / p.blocks_per_plane;
  // Stream only whole blocks that fit the scratch: y and argmax, 8 bytes per output.
  const std::int64_t block_bytes = 8 * p.rows_per_block * p.g.ow;
  if (block_bytes > kForwardScratchMaxBytes && 8 * p.g.ow <= kForwardScratchMaxBytes) {
    p.rows_per_block = kForwardScratchMaxBytes / (8 * p.g.ow);
  }
  p.blocks_per_plane = (p.g.oh + p.rows_per_block - 1) / p.rows_per_block;
  p.units_per_chunk = chunk_units(p.g.h * p.g.w * 4 / p.blocks_per_plane);
  p.stream = 8 * s.y_size() >= kStreamMinBytes &&
             8 * p.rows_per_block * p.g.ow <= kForwardScratchMaxBytes;
  return p;
}

// In a region whose threads all call it: this thread's scratch (common/scratch.hpp, nullptr
// if it cannot be had: an exception must not leave an OpenMP region) if `want`, after every
// thread has tried to get its own; `failed` (shared) is then true for all if any could not.
float* scratch_for_all(bool want, std::int64_t bytes, std::atomic<bool>& failed) {
  if (!want) return nullptr;
  float* buf = thread_scratch(static_cast<std::size_t>(bytes));
  if (buf == nullptr) failed.store(true);
#pragma omp barrier
  return buf;
}

// dst[0, n) = src[0, n): whole 64-byte lines of dst with non-temporal stores, the partial
// lines at either end with ordinary stores (a line never mixes the two kinds, which would
// flush a half-filled write-combining buffer: several times slower than a plain copy).
template <class T>
void stream_copy(T* dst, const T* src, std::int64_t n) {
  static_assert(sizeof(T) == 4);
#if defined(__SSE2__)
  std::int64_t i = 0;
  for (; i < n && (reinterpret_cast<std::uintptr_t>(dst + i) & 63) != 0; ++i) dst[i] = src[i];
  for (; i + 16 <= n; i += 16) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 4));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 8));
    const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 12));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 4), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 8), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 12), e);
  }
  for (; i < n; ++i) dst[i] = src[i];
#else
  std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(T));
#endif
}

// Cut point near element c of an array at dst that falls on a 64-byte line of dst, so that
// consecutive stream_copy calls over [cut(k), cut(k+1)) write whole lines.
inline std::int64_t line_cut(const float* dst, std::int64_t c, std::int64_t n) {
  const auto skew = static_cast<std::int64_t>((reinterpret_cast<std::uintptr_t>(dst) >> 2) & 15);
  const std::int64_t cut = ((c + skew) & ~std::int64_t{15}) - skew;
  return cut < 0 ? 0 : (cut > n ? n : cut);
}

}  // namespace

PoolBackward2x2Fn pool_backward_2x2_kernel(PoolIsa isa) {
  switch (isa) {
    case PoolIsa::avx512: return &maxpool2d_backward_2x2_s2_p0_rows_avx512;
    case PoolIsa::avx2: return &maxpool2d_backward_2x2_s2_p0_rows_avx2;
    case PoolIsa::scalar: break;
  }
  return nullptr;
}

// Large dx is written with non-temporal stores. The one-pass kernel builds each row pair in
// a small buffer and streams it out, so reading dy and argmax and writing dx overlap finely
// (measured on vgg_pool1, one thread: 20 GB/s, against 12 GB/s through whole scratch planes).
// Zero + scatter builds each plane in cache-resident scratch (two planes per thread) and
// streams it out while the next plane is scattered.
PoolBackwardPlan plan_maxpool2d_backward(const MaxPool2dShape& s, int threads) {
  PoolBackwardPlan p{};
  p.g = geometry(s);
  p.planes = s.batch * s.channels;
  const std::int64_t HW = p.g.h * p.g.w;
  p.threads = threads_for(4 * s.x_size(), threads);
  p.planes_per_chunk = chunk_units(4 * HW);
  // The one-pass kernel writes whole 2x2 windows: not for ceil mode's partial last windows.
  const bool whole_windows = 2 * p.g.oh <= p.g.h && 2 * p.g.ow <= p.g.w;
  p.one_pass = choose_pool_kernel(p.g) == PoolKernel::k2x2_s2_p0 && whole_windows
                   ? pool_backward_2x2_kernel(pool_isa_active())
                   : nullptr;
  p.scratch_floats = p.one_pass != nullptr ? 2 * p.g.w + 16 : 2 * HW;
  p.stream = 4 * s.x_size() >= kStreamMinBytes && 4 * p.scratch_floats <= kScratchMaxBytes;
  return p;
}

namespace {

// Orders this thread's non-temporal stores before the region's closing barrier.
void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace

}  // namespace im2gemm::detail

namespace im2gemm {

void maxpool2d_forward(const MaxPool2dShape& s, std::span<const float> x, std::span<float> y,
                       std::span<std::int32_t> argmax) {
  detail::check_maxpool2d_forward(s, x, y, argmax);
  const detail::ForwardPlan p = detail::plan_forward(s, num_threads());
  const std::int64_t HW = p.g.h * p.g.w, OHW = p.g.oh * p.g.ow;
  const std::int64_t units = p.planes * p.blocks_per_plane;
  const float* xd = x.data();
  float* yd = y.data();
  std::int32_t* ad = argmax.data();
  std::atomic<bool> failed{false};
#pragma omp parallel num_threads(p.threads)
  {
    float* ys = detail::scratch_for_all(p.stream, 8 * p.rows_per_block * p.g.ow, failed);
    std::int32_t* as =
        ys != nullptr ? reinterpret_cast<std::int32_t*>(ys + p.rows_per_block * p.g.ow) : nullptr;
    const std::int64_t todo = failed.load() ? 0 : units;  // the same for every thread
#pragma omp for schedule(dynamic, p.units_per_chunk)
    for (std::int64_t u = 0; u < todo; ++u) {
      const std::int64_t plane = u / p.blocks_per_plane, block = u % p.blocks_per_plane;
      const std::int64_t oh0 = block * p.rows_per_block;
      const std::int64_t oh1 = std::min(p.g.oh, oh0 + p.rows_per_block);
      const std::int64_t first = plane * OHW + oh0 * p.g.ow, count = (oh1 - oh0) * p.g.ow;
      if (p.stream) {
        p.rows(p.kernel, p.g, xd + plane * HW, ys, as, oh0, oh1);
        detail::stream_copy(yd + first, ys, count);
        detail::stream_copy(ad + first, as, count);
      } else {
        p.rows(p.kernel, p.g, xd + plane * HW, yd + first, ad + first, oh0, oh1);
      }
    }
    if (p.stream) detail::stream_fence();
  }
  if (failed.load()) throw std::bad_alloc();
}

}  // namespace im2gemm

namespace im2gemm::detail {

namespace {

// Planes of at most this many outputs have dy * act'(y) computed per plane in scratch (fused);
// larger ones in one pass over the whole tensor first.
constexpr std::int64_t kFusedScaleMaxFloats = std::int64_t{16} << 10;

// maxpool2d_backward after the checks, of dy * act'(y) if y != nullptr (y: the forward's
// output, act: the activation whose output the pooling's input is).
void backward_checked(const MaxPool2dShape& s, const float* g, const std::int32_t* a, float* d,
                      const float* y, Activation act) {
  PoolBackwardPlan p = plan_maxpool2d_backward(s, num_threads());
  const std::int64_t HW = p.g.h * p.g.w, OH = p.g.oh, OHW = p.g.oh * p.g.ow;
  // dy of one plane, scaled into this thread's scratch (after the streaming buffer) if fused.
  const bool scale = y != nullptr;
  const std::int64_t scale_at = (p.scratch_floats + 15) & ~std::int64_t{15};
  const bool use_scratch = p.stream || scale;
  const std::int64_t scratch_bytes = 4 * (scale ? scale_at + OHW : p.scratch_floats);
  auto dy_of = [&](float* buf, std::int64_t plane) -> const float* {
    if (!scale) return g + plane * OHW;
    float* sc = buf + scale_at;
    std::memcpy(sc, g + plane * OHW, static_cast<std::size_t>(OHW) * sizeof(float));
    activation_backward_unchecked(act, y + plane * OHW, sc, OHW);
    return sc;
  };
  // Zero + scatter: dy added in output order (the reference's order, so overlapping windows
  // round the same way) into a zeroed plane.
  auto scatter = [&](float* dp, const float* gp, std::int64_t plane, std::int64_t o0,
                     std::int64_t o1) {
    const std::int32_t* ap = a + plane * OHW;
    for (std::int64_t o = o0; o < o1; ++o) dp[ap[o]] += gp[o];
  };
  auto zero = [&](float* dp) { std::memset(dp, 0, static_cast<std::size_t>(HW) * sizeof(float)); };
  std::atomic<bool> failed{false};
  if (p.one_pass != nullptr) {
#pragma omp parallel num_threads(p.threads)
    {
      float* buf = scratch_for_all(use_scratch, scratch_bytes, failed);
      const std::int64_t todo = failed.load() ? 0 : p.planes;  // the same for every thread
#pragma omp for schedule(dynamic, p.planes_per_chunk) nowait
      for (std::int64_t plane = 0; plane < todo; ++plane) {
        float* dp = d + plane * HW;
        const float* gp = dy_of(buf, plane);
        if (!p.one_pass(p.g, gp, a + plane * OHW, dp, 0, OH, p.stream ? buf : nullptr)) {
          zero(dp);  // an argmax outside its window
          scatter(dp, gp, plane, 0, OHW);
        }
      }
      if (p.stream) stream_fence();
    }
    if (failed.load()) throw std::bad_alloc();
    return;
  }
#pragma omp parallel num_threads(p.threads)
  {
    float* buf = scratch_for_all(use_scratch, scratch_bytes, failed);
    const std::int64_t todo = failed.load() ? 0 : p.planes;  // the same for every thread
    constexpr std::int64_t kSlices = 16;  // interleaving grain of scatter and stream-out
    std::int64_t pending = -1;            // plane of this thread waiting in buf[side ^ 1]
    int side = 0;
#pragma omp for schedule(dynamic, p.planes_per_chunk) nowait
    for (std::int64_t plane = 0; plane < todo; ++plane) {
      const float* gp = dy_of(buf, plane);
      if (!p.stream) {
        zero(d + plane * HW);
        scatter(d + plane * HW, gp, plane, 0, OHW);
        continue;
      }
      float* cur = buf + side * HW;
      const float* prev = buf + (side ^ 1) * HW;
      zero(cur);
      for (std::int64_t k = 0; k < kSlices; ++k) {
        scatter(cur, gp, plane, OHW * k / kSlices, OHW * (k + 1) / kSlices);
        if (pending >= 0) {
          float* out = d + pending * HW;
          const std::int64_t c0 = line_cut(out, HW * k / kSlices, HW);
          const std::int64_t c1 = k + 1 == kSlices ? HW : line_cut(out, HW * (k + 1) / kSlices, HW);
          stream_copy(out + c0, prev + c0, c1 - c0);
        }
      }
      pending = plane;
      side ^= 1;
    }
    if (p.stream) {
      if (pending >= 0) stream_copy(d + pending * HW, buf + (side ^ 1) * HW, HW);
      stream_fence();
    }
  }
  if (failed.load()) throw std::bad_alloc();
}

}  // namespace

void maxpool2d_backward_through_activation(const MaxPool2dShape& s, std::span<const float> dy,
                                           std::span<const float> y, Activation act,
                                           std::span<const std::int32_t> argmax,
                                           std::span<float> dx) {
  const char* F = "maxpool2d_backward_through_activation";
  s.validate();
  check_activation(act, "maxpool2d_backward_through_activation: act");
  check_size(F, "dy", dy.size(), s.y_size());
  check_size(F, "y", y.size(), s.y_size());
  check_size(F, "argmax", argmax.size(), s.y_size());
  check_size(F, "dx", dx.size(), s.x_size());
  check_no_overlap(F, "dx", dx, "dy", dy);
  check_no_overlap(F, "dx", dx, "y", y);
  check_no_overlap(F, "dx", dx, "argmax", argmax);
  if (s.out_height() * s.out_width() > kFusedScaleMaxFloats) {
    std::vector<float> scaled(dy.begin(), dy.end());
    activation_backward_unchecked(act, y.data(), scaled.data(), s.y_size());
    return backward_checked(s, scaled.data(), argmax.data(), dx.data(), nullptr,
                            Activation::identity);
  }
  backward_checked(s, dy.data(), argmax.data(), dx.data(), y.data(), act);
}

}  // namespace im2gemm::detail

namespace im2gemm {

void maxpool2d_backward(const MaxPool2dShape& s, std::span<const float> dy,
                        std::span<const std::int32_t> argmax, std::span<float> dx) {
  // Every argmax entry is checked before dx is written.
  detail::check_maxpool2d_backward(s, dy, argmax, dx);
  detail::backward_checked(s, dy.data(), argmax.data(), dx.data(), nullptr, Activation::identity);
}

}  // namespace im2gemm
