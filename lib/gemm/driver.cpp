// The configuration table, the loop over micro-tiles of one packed block, and the plain
// matrix driver (tests and benchmarks hold it against OpenBLAS's sgemm).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <new>

#include "common/scratch.hpp"
#include "common/threads.hpp"
#include "gemm/gemm.hpp"

namespace im2gemm::detail::gemm {

namespace {

using i64 = std::int64_t;

// kc: the A micro-panel (mr x kc floats) is 8 KiB on AVX-512, 6 KiB on AVX2: it stays in the
// 32 KiB L1 while the B block streams past it. b_bytes: a B block plus an A panel fit in half
// of a 1 MiB L2.
const Config kConfigs[] = {
    {Isa::scalar, 4, 16, 256, 256 << 10, &sgemm_ukernel_4x16_scalar, "sgemm_ukernel_4x16_scalar"},
    {Isa::avx2, 6, 16, 256, 384 << 10, &sgemm_ukernel_6x16_avx2, "sgemm_ukernel_6x16_avx2"},
    {Isa::avx512, 8, 48, 256, 384 << 10, &sgemm_ukernel_8x48_avx512, "sgemm_ukernel_8x48_avx512"},
};

}  // namespace

const Config& config(Isa isa) { return kConfigs[static_cast<int>(isa_clamp(isa))]; }

void multiply_block(const Config& cfg, const BlockArgs& g) {
  Tile t;
  t.lda = g.lda;
  t.k = g.k;
  t.ldc = g.ldc;
  t.accumulate = g.accumulate;
  t.relu = g.relu;
  const i64 nr = cfg.nr;
  // M in the fewest tiles of at most mr rows, their heights as equal as can be (the first
  // m % tiles one row taller): the kernels run short tiles at the cost of their rows.
  const i64 tiles = (g.m + cfg.mr - 1) / cfg.mr;
  for (i64 ti = 0, i0 = 0; ti < tiles; ++ti) {
    t.a = g.a + i0 * g.lda;
    t.m = static_cast<int>(g.m / tiles + (ti < g.m % tiles ? 1 : 0));
    t.bias = g.bias ? g.bias + i0 : nullptr;
    float* crow = g.c + i0 * g.ldc;
    for (i64 j0 = 0, p = 0; j0 < g.ncols; j0 += nr, ++p) {
      t.b = g.bpack + p * g.panel_stride;
      t.c = crow + j0;
      t.n = static_cast<int>(std::min<i64>(nr, g.ncols - j0));
      cfg.ukernel(t);
    }
    i0 += t.m;
  }
}

void pack_b_rows(const float* b, i64 ldb, i64 k0, i64 k1, i64 j0, i64 j1, int nr, float* dst,
                 i64 panel_stride) {
  for (i64 p = 0; j0 + p * nr < j1; ++p) {
    const i64 c0 = j0 + p * nr, n = std::min<i64>(nr, j1 - c0);
    float* d = dst + p * panel_stride;
    for (i64 kk = k0; kk < k1; ++kk, d += nr) {
      const float* s = b + kk * ldb + c0;
      i64 j = 0;
      for (; j < n; ++j) d[j] = s[j];
      for (; j < nr; ++j) d[j] = 0.0f;
    }
  }
}

void pack_b_transposed(const float* x, i64 ldx, i64 k0, i64 k1, i64 j0, i64 j1, int nr, float* dst,
                       i64 panel_stride) {
  for (i64 p = 0; j0 + p * nr < j1; ++p) {
    const i64 c0 = j0 + p * nr, n = std::min<i64>(nr, j1 - c0);
    float* d = dst + p * panel_stride;
    // 16 k at a time: the 16 x n source block is read row by row, the destination is 16
    // panel rows (16 * nr floats) that stay in L1.
    for (i64 kb = k0; kb < k1; kb += 16) {
      const i64 ke = std::min(k1, kb + 16);
      for (i64 l = 0; l < n; ++l) {
        const float* s = x + (c0 + l) * ldx;
        for (i64 kk = kb; kk < ke; ++kk) d[(kk - k0) * nr + l] = s[kk];
      }
      for (i64 l = n; l < nr; ++l) {
        for (i64 kk = kb; kk < ke; ++kk) d[(kk - k0) * nr + l] = 0.0f;
      }
    }
  }
}

namespace {
// The row-major B pack of a configuration: the configured ISA's CPU has AVX2 unless it is the
// scalar row.
using RowsPackFn = void (*)(const float*, i64, i64, i64, i64, i64, int, float*, i64);
RowsPackFn rows_pack(const Config& cfg) {
  return cfg.isa == Isa::scalar ? pack_b_rows : pack_b_rows_avx2;
}
}  // namespace

i64 nt_block_cols(const Config& cfg) {
  return std::max<i64>(cfg.nr, cfg.b_bytes / (4 * cfg.kc) / cfg.nr * cfg.nr);
}

i64 nt_pack_floats(const Config& cfg) { return cfg.kc * nt_block_cols(cfg); }

void sgemm_nt_with(const Config& cfg, i64 m, i64 n, i64 k, const float* a, i64 lda, PackBFn pack_b,
                   const void* ctx, float* c, i64 ldc, bool accumulate, float* pack) {
  const i64 nc = nt_block_cols(cfg);
  const i64 k_blocks = (k + cfg.kc - 1) / cfg.kc;
  const i64 kc = (k + k_blocks - 1) / k_blocks;  // <= cfg.kc
  for (i64 j0 = 0; j0 < n; j0 += nc) {
    const i64 j1 = std::min(n, j0 + nc);
    for (i64 k0 = 0; k0 < k; k0 += kc) {
      const i64 k1 = std::min(k, k0 + kc);
      pack_b(ctx, k0, k1, j0, j1, pack, kc * cfg.nr);
      BlockArgs g;
      g.a = a + k0;
      g.lda = lda;
      g.m = m;
      g.k = k1 - k0;
      g.bpack = pack;
      g.panel_stride = kc * cfg.nr;
      g.ncols = j1 - j0;
      g.c = c + j0;
      g.ldc = ldc;
      g.accumulate = accumulate || k0 > 0;
      multiply_block(cfg, g);
    }
  }
}

namespace {
struct TransposedX {
  const float* x;
  i64 ldx;
  const Config* cfg;
};
void pack_transposed_x(const void* ctx, i64 k0, i64 k1, i64 j0, i64 j1, float* dst,
                       i64 panel_stride) {
  const auto& t = *static_cast<const TransposedX*>(ctx);
  // The configured ISA's CPU has AVX2 unless it is the scalar row.
  (t.cfg->isa == Isa::scalar ? pack_b_transposed : pack_b_transposed_avx2)(t.x, t.ldx, k0, k1, j0,
                                                                           j1, t.cfg->nr, dst,
                                                                           panel_stride);
}
}  // namespace

void sgemm_nt(const Config& cfg, i64 m, i64 n, i64 k, const float* a, i64 lda, const float* x,
              i64 ldx, float* c, i64 ldc, bool accumulate, float* pack) {
  const TransposedX t{x, ldx, &cfg};
  sgemm_nt_with(cfg, m, n, k, a, lda, &pack_transposed_x, &t, c, ldc, accumulate, pack);
}

namespace {
struct RowsB {
  const float* b;
  i64 ldb;
  RowsPackFn pack;
  int nr;
};
void pack_rows_b(const void* ctx, i64 k0, i64 k1, i64 j0, i64 j1, float* dst, i64 panel_stride) {
  const auto& r = *static_cast<const RowsB*>(ctx);
  r.pack(r.b, r.ldb, k0, k1, j0, j1, r.nr, dst, panel_stride);
}
}  // namespace

void sgemm_nn(const Config& cfg, i64 m, i64 n, i64 k, const float* a, i64 lda, const float* b,
              i64 ldb, float* c, i64 ldc, bool accumulate, float* pack) {
  const RowsB r{b, ldb, rows_pack(cfg), cfg.nr};
  sgemm_nt_with(cfg, m, n, k, a, lda, &pack_rows_b, &r, c, ldc, accumulate, pack);
}

void sgemm_packed(Isa isa, i64 m, i64 n, i64 k, const float* a, i64 lda, const float* b, i64 ldb,
                  float* c, i64 ldc, int threads) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // an empty sum
    for (i64 i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
  const Config& cfg = config(isa);
  const i64 kc_max = std::min<i64>(k, cfg.kc);
  const i64 k_blocks = (k + kc_max - 1) / kc_max;
  const i64 kc = (k + k_blocks - 1) / k_blocks;
  const i64 nc_max = std::max<i64>(cfg.nr, cfg.b_bytes / (4 * kc) / cfg.nr * cfg.nr);
  const i64 panel_stride = kc * cfg.nr;
  const RowsPackFn pack = rows_pack(cfg);
  const std::size_t bytes = static_cast<std::size_t>((nc_max / cfg.nr) * panel_stride) *
                            sizeof(float);
  // Each thread takes an equal share of the micro-panels (within one), cut into blocks of at
  // most nc_max columns: whole blocks dealt round-robin left a thread idle for a third of
  // the time where N made three blocks (resnet_1x1's 3136 columns, resnet_3x3s2's 784).
  const i64 panels = (n + cfg.nr - 1) / cfg.nr;
  const int team = static_cast<int>(std::min<i64>(std::max(threads, 1), panels));
  std::atomic<bool> failed{false};
#pragma omp parallel num_threads(team) if (team > 1)
  {
    sgemm_single_thread_guard();
    float* bp = thread_scratch(bytes);
    if (bp == nullptr) failed.store(true);
#pragma omp barrier
    if (!failed.load()) {
      const i64 t = omp_get_thread_num(), nt = omp_get_num_threads();
      const auto share = [&](i64 i) { return i * (panels / nt) + std::min(i, panels % nt); };
      const i64 first = share(t) * cfg.nr, last = std::min(n, share(t + 1) * cfg.nr);
      const i64 own_panels = share(t + 1) - share(t);
      const i64 blocks = (own_panels * cfg.nr + nc_max - 1) / nc_max;
      const i64 nc = blocks > 0 ? (own_panels + blocks - 1) / blocks * cfg.nr : cfg.nr;
      for (i64 j0 = first; j0 < last; j0 += nc) {
        const i64 j1 = std::min(last, j0 + nc);
        for (i64 k0 = 0; k0 < k; k0 += kc) {
          const i64 k1 = std::min(k, k0 + kc);
          pack(b, ldb, k0, k1, j0, j1, cfg.nr, bp, panel_stride);
          BlockArgs g;
          g.a = a + k0;
          g.lda = lda;
          g.m = m;
          g.k = k1 - k0;
          g.bpack = bp;
          g.panel_stride = panel_stride;
          g.ncols = j1 - j0;
          g.c = c + j0;
          g.ldc = ldc;
          g.accumulate = k0 > 0;
          multiply_block(cfg, g);
        }
      }
    }
  }
  if (failed.load()) throw std::bad_alloc();
}

}  // namespace im2gemm::detail::gemm
