// Internal: the packed sgemm engine. It knows matrices, not convolutions:
//   C (m x n, row stride ldc) = init + A (m x k, rows at a + i*lda, k contiguous) * B (k x n)
// where B arrives packed by the caller into micro-panels of NR columns: panel p holds, for
// each k, the NR floats of columns [p*NR, p*NR + NR) contiguously (lanes past n are zero).
// The caller owns the packing (an im2col packer for convolutions, pack_b_rows for a plain
// matrix) and the K blocking; this file owns the micro-kernels and the loop over tiles.
//
// Orientation: the NR columns of a tile are the vector lanes, the MR rows of A are
// broadcast; a tile stores straight into C rows (NCHW output rows for a convolution), so the
// bias is one broadcast per row and ReLU is applied in registers before the only store.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/isa.hpp"

namespace im2gemm::detail::gemm {

/// One micro-kernel call on an m x n tile (1 <= m <= MR, 1 <= n <= NR).
struct Tile {
  const float* a = nullptr;  ///< row i < m of A at a + i*lda (rows >= m are never read)
  std::int64_t lda = 0;
  const float* b = nullptr;  ///< packed micro-panel: k rows of NR floats, 64-byte aligned
  std::int64_t k = 0;        ///< >= 1
  float* c = nullptr;        ///< C tile: row i at c + i*ldc, columns [0, n); nothing else is
  std::int64_t ldc = 0;      ///< read or written
  int m = 0, n = 0;
  const float* bias = nullptr;  ///< !accumulate: C starts as bias[i] (null: zero)
  bool accumulate = false;      ///< C starts as C (read before the update)
  bool relu = false;            ///< C = max(C, 0) after the update, before the store
};

using UkernelFn = void (*)(const Tile&);

/// One row of the configuration table: the register tile and the blocking of one ISA.
struct Config {
  Isa isa;
  int mr, nr;            ///< register tile: mr rows of A (broadcast) x nr columns (lanes)
  std::int64_t kc;       ///< largest K block: the A micro-panel (mr x kc) stays in L1
  std::int64_t b_bytes;  ///< target size of one packed B block (kc x nc), kept in L2
  UkernelFn ukernel;
  const char* name;  ///< sgemm_ukernel_<MR>x<NR>_<isa>
};

/// The configuration row for `isa` (clamped to what the CPU supports). The scalar row is the
/// portable reference kernel.
const Config& config(Isa isa);

/// The portable reference micro-kernel for a tile of panel width nr (any m, n <= nr): the
/// oracle the tests compare every configured kernel against.
void ukernel_ref(const Tile& t, int nr);

/// C[0:m, 0:ncols] (row stride ldc) = init + A[0:m, k0:k1] * packed B block, where the B
/// block holds ceil(ncols/NR) micro-panels of (k1-k0) rows each, panel p at
/// bpack + p * panel_stride. Rows of A in mr-row panels, each swept over every B micro-panel
/// (the A micro-panel stays in L1, B streams from L2). init: bias (null: zero) unless
/// accumulate; relu before the store.
struct BlockArgs {
  const float* a = nullptr;
  std::int64_t lda = 0, m = 0;
  std::int64_t k = 0;  ///< rows of the B block (k1 - k0); a points at column k0
  const float* bpack = nullptr;
  std::int64_t panel_stride = 0;  ///< floats between consecutive B micro-panels
  std::int64_t ncols = 0;
  float* c = nullptr;
  std::int64_t ldc = 0;
  const float* bias = nullptr;
  bool accumulate = false, relu = false;
};
void multiply_block(const Config& cfg, const BlockArgs& args);

/// Packs columns [j0, j1) and rows [k0, k1) of a row-major matrix B (row stride ldb) into
/// micro-panels of nr lanes (panel p at dst + p*panel_stride, row kk at + (kk-k0)*nr), zero
/// lanes past j1.
void pack_b_rows(const float* b, std::int64_t ldb, std::int64_t k0, std::int64_t k1,
                 std::int64_t j0, std::int64_t j1, int nr, float* dst, std::int64_t panel_stride);

/// The same with AVX2 copies for panels of 16 or 48 lanes (others take the portable copy).
/// Only on a CPU with AVX2.
void pack_b_rows_avx2(const float* b, std::int64_t ldb, std::int64_t k0, std::int64_t k1,
                      std::int64_t j0, std::int64_t j1, int nr, float* dst,
                      std::int64_t panel_stride);

/// Packs rows [k0, k1) and columns [j0, j1) of B = X^T, X row-major n x k (row stride ldx):
/// panel p, row kk holds X[j0 + p*nr + l][kk] in lane l (zero past j1). A transposing copy:
/// X's rows (the summed index contiguous, e.g. dy or a column block over pixels) become the
/// packed B's columns.
void pack_b_transposed(const float* x, std::int64_t ldx, std::int64_t k0, std::int64_t k1,
                       std::int64_t j0, std::int64_t j1, int nr, float* dst,
                       std::int64_t panel_stride);

/// The same with AVX2 8x8 transposes (nr a multiple of 8; others take the portable copy).
/// Only on a CPU with AVX2.
void pack_b_transposed_avx2(const float* x, std::int64_t ldx, std::int64_t k0, std::int64_t k1,
                            std::int64_t j0, std::int64_t j1, int nr, float* dst,
                            std::int64_t panel_stride);

/// Columns of one packed B block of sgemm_nt (nc): a multiple of nr, about b_bytes with kc rows.
std::int64_t nt_block_cols(const Config& cfg);
/// Floats of packing buffer sgemm_nt needs (kc x nc of the configuration).
std::int64_t nt_pack_floats(const Config& cfg);

/// C (m x n, row stride ldc) = (accumulate ? C : 0) + A (m x k, row stride lda) * X^T, X row-major
/// n x k (row stride ldx), on the calling thread, B packed block by block (kc rows x nc
/// columns) into `pack` (nt_pack_floats(cfg) floats, 64-byte aligned). The GEMM of backward
/// weights: dW^T += col * dy^T, or dW += dy * col^T.
void sgemm_nt(const Config& cfg, std::int64_t m, std::int64_t n, std::int64_t k, const float* a,
              std::int64_t lda, const float* x, std::int64_t ldx, float* c, std::int64_t ldc,
              bool accumulate, float* pack);

/// A caller's B packer for sgemm_nt_with: fills rows [k0, k1) and columns [j0, j1) of B into
/// micro-panels exactly as pack_b_transposed does (panel p at dst + p*panel_stride, row kk at
/// + (kk-k0)*nr, lanes past j1 zero). Backward weights passes one that runs im2col on a few
/// pixels at a time into a small buffer and transposes from there (no column block).
using PackBFn = void (*)(const void* ctx, std::int64_t k0, std::int64_t k1, std::int64_t j0,
                         std::int64_t j1, float* dst, std::int64_t panel_stride);
/// sgemm_nt with B = X^T supplied block by block by pack_b(ctx, ...) instead of read from X.
void sgemm_nt_with(const Config& cfg, std::int64_t m, std::int64_t n, std::int64_t k,
                   const float* a, std::int64_t lda, PackBFn pack_b, const void* ctx, float* c,
                   std::int64_t ldc, bool accumulate, float* pack);
/// C (m x n, row stride ldc) = (accumulate ? C : 0) + A (m x k, row stride lda) * B (k x n,
/// row-major, row stride ldb) on the calling thread, B packed block by block (pack_b_rows) into
/// `pack` (nt_pack_floats(cfg) floats, 64-byte aligned). The GEMM of backward data's column
/// blocks: dcol = W^T dy with W^T transposed beforehand.
void sgemm_nn(const Config& cfg, std::int64_t m, std::int64_t n, std::int64_t k, const float* a,
              std::int64_t lda, const float* b, std::int64_t ldb, float* c, std::int64_t ldc,
              bool accumulate, float* pack);
/// Plain row-major C (m x n) = A (m x k) * B (k x n) on the packed engine with `threads`
/// OpenMP threads (columns split over threads): the yardstick against OpenBLAS's sgemm in the
/// tests and benchmarks. m or n of 0: nothing; k of 0: C = 0. Throws std::bad_alloc (C
/// untouched) if scratch cannot be had.
void sgemm_packed(Isa isa, std::int64_t m, std::int64_t n, std::int64_t k, const float* a,
                  std::int64_t lda, const float* b, std::int64_t ldb, float* c, std::int64_t ldc,
                  int threads);

// The configured kernels (defined in x86/ and ref/).
void sgemm_ukernel_4x16_scalar(const Tile& t);
void sgemm_ukernel_6x16_avx2(const Tile& t);
void sgemm_ukernel_8x48_avx512(const Tile& t);

}  // namespace im2gemm::detail::gemm
