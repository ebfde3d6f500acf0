// Public convolution entry points: im2col / col2im lowering + single-threaded OpenBLAS sgemm
// per column block, inside one OpenMP region per call (or on the calling thread for tiny
// one-thread plans, see run_threads). plan_conv() (plan.cpp) decides the blocking and the
// split over threads; this file only executes the plan.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <climits>
#include <cstring>
#include <new>
#include <vector>

#include "common/checks.hpp"
#include "common/parallel.hpp"
#include "common/scratch.hpp"
#include "common/threads.hpp"
#include "conv/depthwise.hpp"
#include "conv/engine.hpp"
#include "conv/lowering.hpp"
#include "conv/pack/im2col_pack.hpp"
#include "conv/packed_conv.hpp"
#include "conv/plan.hpp"
#include "gemm/gemm.hpp"
#include "im2gemm/conv2d.hpp"
#include "im2gemm/reference.hpp"

namespace im2gemm {

namespace {

using i64 = std::int64_t;
using detail::ConvGeom;
using detail::ConvPass;
using detail::ConvPlan;
using detail::part_begin;
using detail::run_with_scratch;

// Row-major C = op(A) * op(B) + beta*C with int dimensions (checked by fits_blas_int).
void sgemm(bool trans_a, bool trans_b, i64 m, i64 n, i64 k, const float* a, i64 lda, const float* b,
           i64 ldb, float beta, float* c, i64 ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(m), static_cast<blasint>(n),
              static_cast<blasint>(k), 1.0f, a, static_cast<blasint>(lda), b,
              static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}

// Every sgemm dimension and leading dimension is at most one of these.
bool fits_blas_int(const ConvPlan& p) {
  const i64 lim = INT_MAX;
  return p.K <= lim && p.P <= lim && p.Fg <= lim && p.images_per_block * p.P <= lim;
}

struct Scratch {
  float* col = nullptr;
  float* tmp = nullptr;
  float* partial = nullptr;
  float* pack = nullptr;  ///< backward passes on the packed engine: its B blocks
};

i64 round16(i64 floats) { return (floats + 15) / 16 * 16; }

// Runs body(t, nthr, sc) on the plan's threads, each with its own scratch (see
// run_with_scratch: allocation failure throws std::bad_alloc before any body runs).
template <class Body>
void run_threads(const ConvPlan& p, Body&& body) {
  run_with_scratch(p.threads, p.run_inline, p.scratch_bytes(), [&](i64 t, i64 nthr, float* base) {
    Scratch sc;
    sc.col = base;
    sc.tmp = sc.col + round16(p.col_floats);
    sc.partial = sc.tmp + round16(p.tmp_floats);
    sc.pack = sc.partial + round16(p.partial_floats);
    body(t, nthr, sc);
  });
}

struct Dims {
  i64 C, F, HW, P, K, Cg, Fg, G, khw;
  explicit Dims(const Conv2dShape& s, const ConvPlan& p)
      : C(s.in_channels), F(s.out_channels), HW(s.in_height * s.in_width), P(p.P), K(p.K), Cg(p.Cg),
        Fg(p.Fg), G(p.groups), khw(p.khw) {}
};

// ---------------------------------------------------------------------------------------
// Forward. Items (ConvPlan::item): image run x group x pixel block x filter block; a thread's
// consecutive filter blocks of one column block reuse its im2col.

// isa: the im2col / col2im kernels' (ConvGeom::isa).
void forward_impl(const Conv2dShape& s, const ConvPlan& p, detail::Isa isa, const float* x,
                  const float* w, const float* bias, float* y, Activation act) {
  const ConvGeom geo(s, isa);
  const Dims d(s, p);
  run_threads(p, [&](i64 t, i64 nthr, const Scratch& sc) {
    i64 col_key = -1;  // the columns_key of the column block sc.col holds
    const detail::Part mine = p.thread_items(t, nthr);
    for (i64 it = mine.begin; it < mine.end; ++it) {
      const detail::WorkItem item = p.item(it);
      const i64 n0 = item.images.begin, n1 = item.images.end, gi = item.groups.begin;
      const i64 f0 = item.filters.begin, f1 = item.filters.end;
      const bool same_columns = item.columns_key == col_key;
      col_key = item.columns_key;
      const float* wg = w + (gi * d.Fg + f0) * d.K;
      const float* bg = bias ? bias + gi * d.Fg + f0 : nullptr;
      if (n1 - n0 == 1) {
        const i64 q0 = item.pixels.begin, q1 = item.pixels.end;
        const float* xg = x + (n0 * d.C + gi * d.Cg) * d.HW;
        const float* cb = xg + q0;  // conv1x1_s1_p0_d1: the input plane is the column block
        i64 ldb = d.P;
        if (!p.pointwise && p.k_chunks == 1) {
          if (!same_columns) detail::im2col_block(geo, xg, d.Cg, q0, q1, sc.col, q1 - q0);
          cb = sc.col;
          ldb = q1 - q0;
        }
        float* yb = y + (n0 * d.F + gi * d.Fg + f0) * d.P + q0;
        // With a bias, y starts as the bias and sgemm adds to it (beta 1): this replaces
        // sgemm's zeroing pass and saves a separate bias pass.
        if (bg) detail::fill_rows(yb, d.P, f1 - f0, q1 - q0, bg);
        if (p.k_chunks == 1) {
          sgemm(false, false, f1 - f0, q1 - q0, d.K, wg, d.K, cb, ldb, bg ? 1.0f : 0.0f, yb, d.P);
        } else {
          // Channel chunks in order, each lowered into sc.col and added into y.
          for (i64 kc = 0; kc < p.k_chunks; ++kc) {
            const i64 c0 = part_begin(kc, p.k_chunks, d.Cg);
            const i64 c1 = part_begin(kc + 1, p.k_chunks, d.Cg);
            detail::im2col_block(geo, xg + c0 * d.HW, c1 - c0, q0, q1, sc.col, q1 - q0);
            sgemm(false, false, f1 - f0, q1 - q0, (c1 - c0) * d.khw, wg + c0 * d.khw, d.K, sc.col,
                  q1 - q0, bg || kc > 0 ? 1.0f : 0.0f, yb, d.P);
          }
          col_key = -1;  // sc.col holds the last chunk only
        }
        detail::bias_act_rows(yb, d.P, f1 - f0, q1 - q0, nullptr, act);
      } else {
        // Several small images side by side: one sgemm, then the finishing pass scatters
        // tmp into y with bias and activation.
        const i64 cols = (n1 - n0) * d.P;
        if (!same_columns) {
          for (i64 i = 0; i < n1 - n0; ++i) {
            detail::im2col_block(geo, x + ((n0 + i) * d.C + gi * d.Cg) * d.HW, d.Cg, 0, d.P,
                                 sc.col + i * d.P, cols);
          }
        }
        sgemm(false, false, f1 - f0, cols, d.K, wg, d.K, sc.col, cols, 0.0f, sc.tmp, cols);
        for (i64 i = 0; i < n1 - n0; ++i) {
          for (i64 f = 0; f < f1 - f0; ++f) {
            detail::bias_act_copy(y + ((n0 + i) * d.F + gi * d.Fg + f0 + f) * d.P,
                                  sc.tmp + f * cols + i * d.P, d.P, bg ? bg[f] : 0.0f, act);
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Backward data. Items (ConvPlan::item): image run x group x channel block; an item owns its
// dx planes.
// col = W_g[:, channels]^T * dy-block, then col2im ADDS into dx rows zeroed just before their
// first touch; a dx row is final once no later pixel block reaches it, and the input
// activation's derivative is applied to it then (while it is still in cache).

// packed: the GEMMs on the engine (gemm::sgemm_nn) with A = W^T from wt, the weights transposed
// per group (wt[g][j][f], j < K, f < Fg; filled here by all threads), else OpenBLAS.
void backward_data_impl(const Conv2dShape& s, const ConvPlan& p, detail::Isa isa, const float* dy,
                        const float* w, float* dx, Activation act, const float* x,
                        const detail::gemm::Config* packed = nullptr, float* wt = nullptr) {
  const ConvGeom geo(s, isa);
  const Dims d(s, p);
  const i64 H = s.in_height, W = s.in_width;
  // Pixel blocks of whole output rows (or one block): col2im gathers each block's dx rows.
  const bool gather_rows = !p.pointwise && detail::col2im_gathers(geo) &&
                           (p.pixel_blocks == 1 || p.block_pixels % geo.OW == 0);
  run_threads(p, [&](i64 t, i64 nthr, const Scratch& sc) {
    if (packed != nullptr) {
      const i64 units = d.G * d.K;  // rows (g, j) of wt
      for (i64 u = part_begin(t, nthr, units); u < part_begin(t + 1, nthr, units); ++u) {
        const float* src = w + (u / d.K) * d.Fg * d.K + u % d.K;
        for (i64 f = 0; f < d.Fg; ++f) wt[u * d.Fg + f] = src[f * d.K];
      }
#pragma omp barrier
    }
    // dcol (rows x n, row stride ldc) = rows [j0, j0 + rows) of group gi's W^T (x Fg) * dy
    // block (Fg x n, row stride ldb).
    auto dcol_gemm = [&](i64 gi, i64 j0, i64 rows, i64 n, const float* b, i64 ldb, float* c,
                         i64 ldc) {
      if (packed != nullptr) {
        detail::gemm::sgemm_nn(*packed, rows, n, d.Fg, wt + (gi * d.K + j0) * d.Fg, d.Fg, b, ldb, c,
                               ldc, false, sc.pack);
      } else {
        sgemm(true, false, rows, n, d.Fg, w + gi * d.Fg * d.K + j0, d.K, b, ldb, 0.0f, c, ldc);
      }
    };
    const detail::Part mine = p.thread_items(t, nthr);
    for (i64 it = mine.begin; it < mine.end; ++it) {
      const detail::WorkItem item = p.item(it);
      const i64 n0 = item.images.begin, n1 = item.images.end, gi = item.groups.begin;
      const i64 c0 = item.channels.begin, c1 = item.channels.end;
      const i64 nch = c1 - c0, rows = nch * d.khw;
      const i64 j0 = c0 * d.khw;  // the block's first row of the group's W^T
      if (n1 - n0 == 1) {
        const i64 plane0 = (n0 * d.C + gi * d.Cg + c0) * d.HW;
        float* dxg = dx + plane0;
        const float* xg = x ? x + plane0 : nullptr;
        const float* dyg = dy + (n0 * d.F + gi * d.Fg) * d.P;
        i64 zeroed = 0, finished = 0;  // dx rows [0, zeroed) are zeroed, [0, finished) final
        for (i64 pb = 0; pb < p.pixel_blocks; ++pb) {
          const auto [q0, q1] = p.pixel_block_range(pb);
          if (p.pointwise) {  // conv1x1_s1_p0_d1: the sgemm writes dx directly
            dcol_gemm(gi, j0, rows, q1 - q0, dyg + q0, d.P, dxg + q0, d.HW);
            if (act != Activation::identity) {
              for (i64 c = 0; c < nch; ++c) {
                detail::act_backward(act, xg + c * d.HW + q0, dxg + c * d.HW + q0, q1 - q0);
              }
            }
            continue;
          }
          dcol_gemm(gi, j0, rows, q1 - q0, dyg + q0, d.P, sc.col, q1 - q0);
          if (gather_rows) {  // dx rows stored once (added to across blocks), act' applied
            detail::col2im_gather_rows(geo, sc.col, q1 - q0, nch, q0 / geo.OW,
                                       (q1 + geo.OW - 1) / geo.OW, dxg, act, xg);
            continue;
          }
          const i64 done = q1 == d.P ? H : std::clamp((q1 / geo.OW) * geo.SH - geo.PH, i64{0}, H);
          const i64 touched = q1 == d.P ? H
                                        : std::clamp(((q1 - 1) / geo.OW) * geo.SH - geo.PH +
                                                         (geo.KH - 1) * geo.DH + 1,
                                                     i64{0}, H);
          const i64 zero_to = std::max(done, touched);
          if (zero_to > zeroed) {
            for (i64 c = 0; c < nch; ++c) {
              std::memset(dxg + c * d.HW + zeroed * W, 0,
                          static_cast<std::size_t>((zero_to - zeroed) * W) * sizeof(float));
            }
            zeroed = zero_to;
          }
          detail::col2im_add_block(geo, sc.col, q1 - q0, nch, q0, q1, dxg);
          if (act != Activation::identity && done > finished) {
            for (i64 c = 0; c < nch; ++c) {
              detail::act_backward(act, xg + c * d.HW + finished * W, dxg + c * d.HW + finished * W,
                                   (done - finished) * W);
            }
          }
          finished = std::max(finished, done);
        }
      } else {
        // OpenBLAS: one GEMM over the run's dy gathered side by side. The engine: one GEMM per
        // image (its tiles cost the same at 64 pixels), whose column block stays in L2 until
        // col2im reads it (lenet_conv2: a run's block of 896 KB did not, and col2im took half
        // the GEMM's time).
        const bool per_image = packed != nullptr;
        const i64 cols = per_image ? d.P : (n1 - n0) * d.P;
        if (!per_image) {
          for (i64 i = 0; i < n1 - n0; ++i) {
            for (i64 f = 0; f < d.Fg; ++f) {
              detail::copy_floats(sc.tmp + f * cols + i * d.P,
                                  dy + ((n0 + i) * d.F + gi * d.Fg + f) * d.P, d.P);
            }
          }
          dcol_gemm(gi, j0, rows, cols, sc.tmp, cols, sc.col, cols);
        }
        for (i64 i = 0; i < n1 - n0; ++i) {
          const i64 plane0 = ((n0 + i) * d.C + gi * d.Cg + c0) * d.HW;
          float* dxi = dx + plane0;
          const float* coli = per_image ? sc.col : sc.col + i * d.P;
          if (per_image) {
            dcol_gemm(gi, j0, rows, d.P, dy + ((n0 + i) * d.F + gi * d.Fg) * d.P, d.P, sc.col, d.P);
          }
          if (detail::col2im_gather_rows(geo, coli, cols, nch, 0, geo.OH, dxi, act,
                                         x ? x + plane0 : nullptr)) {
            continue;
          }
          std::memset(dxi, 0, static_cast<std::size_t>(nch * d.HW) * sizeof(float));
          detail::col2im_add_block(geo, const_cast<float*>(coli), cols, nch, 0, d.P, dxi);
          if (act != Activation::identity) {
            detail::act_backward(act, x + plane0, dxi, nch * d.HW);
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Backward weights. dW_g[:, channels] (+)= dy-block * col-block^T over images and blocks.

struct WeightsCtx {
  const ConvGeom& geo;
  const Dims& d;
  const ConvPlan& p;
  const float* x;
  const float* dy;
  const detail::gemm::Config* packed;  ///< the packed engine's kernels, or null: OpenBLAS
  /// Packed engine, dW (not dW^T) orientation: im2col fused into the B pack (no column block).
  bool fused = false;
};

// The packers' view of nch channels of a layer's input, images image_stride floats apart.
detail::PackGeom pack_geom(const ConvGeom& g, i64 nch, i64 image_stride) {
  return detail::PackGeom{nch,  g.H,  g.W,  g.KH, g.KW, g.SH, g.SW,
                          g.PH, g.PW, g.DH, g.DW, g.OH, g.OW, image_stride};
}

// The fused B pack of backward weights (pack_im2col_transposed_avx2): B = col^T over a run of
// images, read straight from x. Without it the column block of a run of images (lenet_conv2:
// 7 images, 896 KB) left L2 between its im2col and the transposing pack, and the im2col's
// stores took a third of the GEMM's time.
struct FusedPackCtx {
  detail::PackGeom geom;
  /// Image n0's first channel of the block; at horizontal stride > 1 the run's images split
  /// into column phases.
  const float* x;
  int nr;
  /// The GEMM's K index k is the run's pixel k + k_offset (a pixel part's first pixel).
  i64 k_offset = 0;
};

void pack_im2col_transposed(const void* vctx, i64 k0, i64 k1, i64 j0, i64 j1, float* dst,
                            i64 panel_stride) {
  const auto& c = *static_cast<const FusedPackCtx*>(vctx);
  k0 += c.k_offset;
  k1 += c.k_offset;
  if (c.geom.SW > 1) {
    detail::pack_phases_transposed_avx2(c.geom, c.x, k0, k1, j0, j1, c.nr, dst, panel_stride);
  } else {
    detail::pack_im2col_transposed_avx2(c.geom, c.x, k0, k1, j0, j1, c.nr, dst, panel_stride);
  }
}

// Accumulates pixels px of images [n0, n1) (one run; a run of several images has all of
// them: pixel parts split single images only) of group gi, channels [c0, c1) of the group
// into c_out: dW rows (row stride K) or, with p.weights_transposed, dW^T (rows x Fg, row
// stride Fg). The first sgemm overwrites (beta 0) if `first`.
void weights_run(const WeightsCtx& cx, const Scratch& sc, i64 n0, i64 n1, detail::Part px, i64 gi,
                 i64 c0, i64 c1, float* c_out, bool first, double* db_acc) {
  const Dims& d = cx.d;
  const ConvPlan& p = cx.p;
  const i64 nch = c1 - c0, rows = nch * d.khw;
  // Bias gradient fused into the pass over dy (the block is in cache): db_acc[f] (group gi's
  // filters) += float sum of the block's row f.
  auto bias_sums = [&](const float* dyb, i64 lddy, i64 n) {
    if (db_acc == nullptr) return;
    for (i64 f = 0; f < d.Fg; ++f) db_acc[f] += detail::sum_floats(dyb + f * lddy, n);
  };
  // dW (Fg x rows) += dy-block (Fg x n) * col-block^T, or dW^T (rows x Fg) += col * dy^T.
  auto gemm = [&](i64 n, const float* dyb, i64 lddy, const float* colb, i64 ldcol, float beta) {
    if (cx.packed != nullptr) {
      if (p.weights_transposed) {
        detail::gemm::sgemm_nt(*cx.packed, rows, d.Fg, n, colb, ldcol, dyb, lddy, c_out, d.Fg,
                               beta != 0.0f, sc.pack);
      } else {
        detail::gemm::sgemm_nt(*cx.packed, d.Fg, rows, n, dyb, lddy, colb, ldcol, c_out, d.K,
                               beta != 0.0f, sc.pack);
      }
    } else if (p.weights_transposed) {
      sgemm(false, true, rows, d.Fg, n, colb, ldcol, dyb, lddy, beta, c_out, d.Fg);
    } else {
      sgemm(false, true, d.Fg, rows, n, dyb, lddy, colb, ldcol, beta, c_out, d.K);
    }
  };
  if (cx.fused) {
    // dW (Fg x rows) += dy-run (Fg x pixels of the run) * col^T, B packed from x.
    const i64 cols = (n1 - n0) * px.size();
    const float* a = cx.dy + (n0 * d.F + gi * d.Fg) * d.P + px.begin;
    i64 lda = d.P;
    if (n1 - n0 > 1) {  // the run's dy rows side by side
      for (i64 i = 0; i < n1 - n0; ++i) {
        for (i64 f = 0; f < d.Fg; ++f) {
          detail::copy_floats(sc.tmp + f * cols + i * d.P,
                              cx.dy + ((n0 + i) * d.F + gi * d.Fg + f) * d.P, d.P);
        }
      }
      a = sc.tmp;
      lda = cols;
    }
    const ConvGeom& g = cx.geo;
    FusedPackCtx pc{pack_geom(g, nch, d.C * d.HW), cx.x + (n0 * d.C + gi * d.Cg + c0) * d.HW,
                    cx.packed->nr, px.begin};
    if (g.SW > 1) {  // the run's images split into column phases, in the column block's room
      const i64 per_image = detail::phase_floats(pc.geom);
      const detail::SplitFn split = detail::phase_packer(cx.packed->isa).split;
      for (i64 i = 0; i < n1 - n0; ++i)
        split(pc.geom, pc.x + i * d.C * d.HW, sc.col + i * per_image);
      pc.geom.image_stride = per_image;
      pc.x = sc.col;
    }
    detail::gemm::sgemm_nt_with(*cx.packed, d.Fg, rows, cols, a, lda, &pack_im2col_transposed, &pc,
                                c_out, d.K, !first, sc.pack);
    bias_sums(a, lda, cols);
    return;
  }
  if (n1 - n0 == 1) {
    const float* xg = cx.x + (n0 * d.C + gi * d.Cg + c0) * d.HW;
    const float* dyg = cx.dy + (n0 * d.F + gi * d.Fg) * d.P;
    for (i64 pb = 0; pb < p.pixel_blocks; ++pb) {  // the blocks' parts inside px
      const auto [b0, b1] = p.pixel_block_range(pb);
      const i64 q0 = std::max(b0, px.begin), q1 = std::min(b1, px.end);
      if (q0 >= q1) continue;
      const float* cb = xg + q0;  // conv1x1_s1_p0_d1: the input plane is the column block
      i64 ldb = d.P;
      if (!p.pointwise) {
        detail::im2col_block(cx.geo, xg, nch, q0, q1, sc.col, q1 - q0);
        cb = sc.col;
        ldb = q1 - q0;
      }
      gemm(q1 - q0, dyg + q0, d.P, cb, ldb, first && q0 == px.begin ? 0.0f : 1.0f);
      bias_sums(dyg + q0, d.P, q1 - q0);
    }
    return;
  }
  const i64 cols = (n1 - n0) * d.P;
  for (i64 i = 0; i < n1 - n0; ++i) {
    for (i64 f = 0; f < d.Fg; ++f) {
      detail::copy_floats(sc.tmp + f * cols + i * d.P,
                          cx.dy + ((n0 + i) * d.F + gi * d.Fg + f) * d.P, d.P);
    }
    detail::im2col_block(cx.geo, cx.x + ((n0 + i) * d.C + gi * d.Cg + c0) * d.HW, nch, 0, d.P,
                         sc.col + i * d.P, cols);
  }
  gemm(cols, sc.tmp, cols, sc.col, cols, first ? 0.0f : 1.0f);
  bias_sums(sc.tmp, cols, cols);
}

void backward_weights_impl(const Conv2dShape& s, const ConvPlan& p, detail::Isa isa, const float* x,
                           const float* dy, float* dw, float* db,
                           const detail::gemm::Config* packed, bool fused) {
  const ConvGeom geo(s, isa);
  const Dims d(s, p);
  const WeightsCtx cx{geo, d, p, x, dy, packed, fused};
  const i64 wsize = d.F * d.K;
  std::vector<float*> partials(static_cast<std::size_t>(p.threads), nullptr);
  // Bias gradient: per-thread sums over its images (image split) or the sums of the first
  // channel block of each group (channel split), in double; written to db in a fixed order.
  std::vector<double> db_sums(db ? static_cast<std::size_t>(p.threads * d.F) : 0, 0.0);
  run_threads(p, [&](i64 t, i64 nthr, const Scratch& sc) {
    if (p.weight_partials) {
      // Thread t sums its items (image runs, every group and channel) into its own partial
      // dW (dW^T per group if transposed; untransposed, thread 0's partial is dw itself); then
      // the partials are added into dw in thread order, element ranges split over the threads.
      float* mine = t == 0 && !p.weights_transposed ? dw : sc.partial;
      partials[static_cast<std::size_t>(t)] = mine;
      const detail::Part items = p.thread_items(t, nthr);
      if (items.size() == 0) {
        std::memset(mine, 0, static_cast<std::size_t>(wsize) * sizeof(float));
      }
      for (i64 it = items.begin; it < items.end; ++it) {
        const detail::WorkItem item = p.item(it);
        for (i64 gi = item.groups.begin; gi < item.groups.end; ++gi) {
          double* acc = db ? db_sums.data() + t * d.F + gi * d.Fg : nullptr;
          weights_run(cx, sc, item.images.begin, item.images.end, item.pixels, gi,
                      item.channels.begin, item.channels.end, mine + gi * d.Fg * d.K,
                      it == items.begin, acc);
        }
      }
#pragma omp barrier
      if (p.weights_transposed) {
        // dw[g][f][k] = sum over threads, in thread order, of partial[g][k][f]. Threads take
        // tiles of 16 filters: a partial is read a whole line per k, and the 16 dw rows being
        // written stay in L1 (an element-wise loop with three divisions per element was 7% of
        // resnet_3x3s2's backward weights).
        constexpr i64 kTile = 16;
        const i64 tiles = (d.Fg + kTile - 1) / kTile, units = d.G * tiles;
        for (i64 un = part_begin(t, nthr, units); un < part_begin(t + 1, nthr, units); ++un) {
          const i64 g = un / tiles, f0 = un % tiles * kTile, f1 = std::min(d.Fg, f0 + kTile);
          float* dwg = dw + g * d.Fg * d.K;
          for (i64 k = 0; k < d.K; ++k) {
            const i64 src = (g * d.K + k) * d.Fg;
            for (i64 f = f0; f < f1; ++f) {
              float acc = partials[0][src + f];
              for (i64 u = 1; u < nthr; ++u) acc += partials[static_cast<std::size_t>(u)][src + f];
              dwg[f * d.K + k] = acc;
            }
          }
        }
      } else {
        const i64 e0 = part_begin(t, nthr, wsize), e1 = part_begin(t + 1, nthr, wsize);
        for (i64 u = 1; u < nthr; ++u) {
          detail::add_floats(dw + e0, partials[static_cast<std::size_t>(u)] + e0, e1 - e0);
        }
      }
    } else {
      const detail::Part mine = p.thread_items(t, nthr);
      for (i64 it = mine.begin; it < mine.end; ++it) {
        const detail::WorkItem item = p.item(it);
        const i64 gi = item.groups.begin, c0 = item.channels.begin, c1 = item.channels.end;
        float* slice = dw + gi * d.Fg * d.K + c0 * d.khw;  // dW[g][:, channels c0..c1)
        float* c_out = p.weights_transposed ? sc.partial : slice;
        double* acc = db && item.block == 0 ? db_sums.data() + gi * d.Fg : nullptr;
        for (i64 r = item.runs.begin; r < item.runs.end; ++r) {
          const detail::Part run = p.image_run(r);
          weights_run(cx, sc, run.begin, run.end, item.pixels, gi, c0, c1, c_out,
                      r == item.runs.begin, acc);
        }
        if (p.weights_transposed) {  // dW slice (Fg x rows, stride K) = accumulated dW^T
          const i64 rows = (c1 - c0) * d.khw;
          for (i64 f = 0; f < d.Fg; ++f) {
            for (i64 r = 0; r < rows; ++r) slice[f * d.K + r] = c_out[r * d.Fg + f];
          }
        }
      }
    }
  });
  if (db != nullptr) {
    const i64 parts = p.weight_partials ? p.threads : 1;
    for (i64 f = 0; f < d.F; ++f) {
      double acc = 0.0;
      for (i64 u = 0; u < parts; ++u) acc += db_sums[static_cast<std::size_t>(u * d.F + f)];
      db[f] = static_cast<float>(acc);
    }
  }
}

int resolve_threads(int threads) { return threads > 0 ? threads : num_threads(); }

}  // namespace

bool conv2d_fast_path(const Conv2dShape& s) {
  s.validate();
  return fits_blas_int(detail::plan_conv(s, ConvPass::forward, 1));
}

std::size_t conv2d_scratch_bytes(const Conv2dShape& s, int threads) {
  s.validate();
  if (threads < 0) {
    detail::fail("conv2d_scratch_bytes: threads must be >= 0, got " + std::to_string(threads));
  }
  const int t = resolve_threads(threads);
  std::size_t bytes = 0;
  for (ConvPass pass : {ConvPass::forward, ConvPass::backward_data, ConvPass::backward_weights}) {
    bytes = std::max(bytes, detail::plan_conv(s, pass, t).scratch_bytes());
  }
  if (detail::is_depthwise(s) || detail::is_narrow_grouped(s)) {  // the direct kernels
    for (int pass = 0; pass < 3; ++pass) {
      bytes =
          std::max(bytes, detail::plan_depthwise(s, pass, t, detail::isa_active()).scratch_bytes());
    }
  }
  // The packed engine's plans too, whichever backend a call takes (its ISA: the active one,
  // and for forward also the one forward_engine_options may choose instead).
  const detail::Isa isa = detail::isa_active();
  const detail::Isa fwd_isa =
      detail::forward_engine_options(s, {detail::GemmBackend::automatic, isa, t}).isa;
  const detail::PackedConv fwd = detail::packed_forward_problem(s);
  bytes = std::max(bytes, detail::plan_packed(fwd, isa, t).scratch_bytes());
  if (fwd_isa != isa) bytes = std::max(bytes, detail::plan_packed(fwd, fwd_isa, t).scratch_bytes());
  bytes = std::max(
      bytes, detail::plan_packed(detail::packed_backward_data_problem(s), isa, t).scratch_bytes());
  return bytes;
}

void conv2d_forward(const Conv2dShape& s, std::span<const float> x, std::span<const float> w,
                    std::span<const float> bias, std::span<float> y, Activation act) {
  detail::check_conv2d_forward(s, x, w, bias, y, act);
  detail::conv2d_forward_with(detail::default_conv_options(), s, x, w, bias, y, act);
}

void conv2d_backward_data(const Conv2dShape& s, std::span<const float> dy, std::span<const float> w,
                          std::span<float> dx, Activation input_activation,
                          std::span<const float> x) {
  detail::check_conv2d_backward_data(s, dy, w, dx, input_activation, x);
  detail::conv2d_backward_data_with(detail::default_conv_options(), s, dy, w, dx, input_activation,
                                    x);
}

void conv2d_backward_weights(const Conv2dShape& s, std::span<const float> x,
                             std::span<const float> dy, std::span<float> dw, std::span<float> db) {
  detail::check_conv2d_backward_weights(s, x, dy, dw, db);
  detail::conv2d_backward_weights_with(detail::default_conv_options(), s, x, dy, dw, db);
}

}  // namespace im2gemm

namespace im2gemm::detail {

namespace {

// True when no weight is infinite or NaN (one pass of integer compares: vectorises).
bool all_finite(std::span<const float> v) {
  std::uint32_t bad = 0;
  for (const float f : v) {
    const auto bits = std::bit_cast<std::uint32_t>(f);
    bad |= static_cast<std::uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

}  // namespace

ConvOptions default_conv_options() {
  return ConvOptions{gemm_backend_env(), isa_env_cap(), num_threads()};
}

bool backward_data_transposed(const Conv2dShape& s) {
  // Every dx cell is formed from a full KH x KW window of dy (its zero border included):
  // H*W/(OH*OW) times the GEMM's work, e.g. 2100x on a 65x64 kernel over a 65x65 plane (the
  // fuzzer's find, 38 s under ASan).
  return s.stride_height == 1 && s.stride_width == 1 &&
         s.in_height * s.in_width <=
             kMaxPackedBackwardDataInflation * s.out_height() * s.out_width();
}

bool weights_fused_pack(const Conv2dShape& s, Isa isa) {
  const gemm::Config& cfg = gemm::config(isa);
  return cfg.isa != Isa::scalar && cfg.nr % 8 == 0 && s.stride_width == 1 &&
         !is_conv1x1_s1_p0_d1(s);
}

// Floats of one vector of a tile: a micro-panel's last tile computes whole vectors only (on
// AVX-512 one, two or three of its 48 lanes), so a GEMM's lane dimension costs its size
// rounded up to this, not to the panel width.
constexpr i64 kTileVector = 16;

bool weights_fused_phases(const Conv2dShape& s, const ConvPlan& p, Isa isa) {
  const gemm::Config& cfg = gemm::config(isa);
  if (cfg.isa == Isa::scalar || cfg.nr % 8 != 0 || s.stride_width < 2 ||
      s.stride_width > kMaxPackedForwardStride || p.skips_im2col()) {
    return false;
  }
  // The most channels a run packs: all of a group's (image split) or a channel block's.
  const i64 nch = p.weight_partials ? p.Cg : (p.Cg + p.channel_blocks - 1) / p.channel_blocks;
  // The fused pack computes dW (taps on the panels' lanes), not dW^T: taps that leave more
  // than 1/kMinLaneFill of the lanes the tiles compute empty keep the im2col blocks (README,
  // "Tuning constants").
  constexpr i64 kMinLaneFill = 10;
  const i64 rows = nch * p.khw, lanes = round_up(rows, kTileVector);
  if ((lanes - rows) * kMinLaneFill > rows) return false;
  return p.images_per_block * phase_floats(pack_geom(ConvGeom(s), nch, 0)) <= p.col_floats;
}

GemmBackend conv_backend(const Conv2dShape& s, ConvPass pass, const ConvOptions& o) {
  const bool vector_isa = isa_clamp(o.isa) != Isa::scalar;
  const i64 khw = s.kernel_height * s.kernel_width;
  // The micro-panel width of the ISA (16 lanes on AVX2, 48 on AVX-512): the rules below were
  // measured per width.
  const i64 nr = gemm::config(o.isa).nr;
  const bool narrow_panels = nr <= kMaxNarrowPanelLanes;
  switch (pass) {
    case ConvPass::forward: {
      if (o.backend != GemmBackend::automatic) return o.backend;
      // The packed engine where its packer and tiles pay: output rows of at least a third
      // of a micro-panel (AVX-512's 48 lanes: 16 pixels; AVX2's 16 lanes: 6, so lenet_conv2's
      // 8-pixel and the 7x7 layers' rows qualify), horizontal stride 1 or, up to
      // kMaxPackedForwardStride, packed from column phases where they pay
      // (kMinPhaseMacsPerInput), and a K that amortises a tile's set-up. With 48-lane panels,
      // 1x1 stride-1 shapes run on the openblas path, which skips im2col for them; with
      // 16-lane panels the packed engine measured ahead there too (plan.hpp).
      const bool fits = s.out_width() * kMinPackedRowPanelFraction >= nr &&
                        s.stride_width <= kMaxPackedForwardStride &&
                        s.in_channels / s.groups * khw >= kMinPackedK &&
                        (narrow_panels || !is_conv1x1_s1_p0_d1(s));
      if (!vector_isa || !fits) return GemmBackend::openblas;
      if (s.stride_width == 1) return GemmBackend::packed;
      const bool phases_pay = s.out_channels / s.groups * khw >=
                              kMinPhaseMacsPerInput * s.stride_height * s.stride_width;
      return phases_pay && plan_packed(packed_forward_problem(s), o.isa, o.threads, o.tuning).phases
                 ? GemmBackend::packed
                 : GemmBackend::openblas;
    }
    case ConvPass::backward_data: {
      if (o.backend != GemmBackend::automatic) return o.backend;
      const bool long_k = s.out_channels / s.groups * khw >= kMinPackedK;
      const bool wide = s.in_channels / s.groups >= kMinPackedBackwardDataChannels && long_k;
      if (!backward_data_transposed(s)) {
        // col2im with the engine's GEMMs (M = C/groups*KH*KW, one image's pixels a GEMM):
        // on 16-lane panels ahead of the openblas path with enough input channels, level or
        // behind with 3; on 48-lane panels level or ahead on every suite layer since dy is
        // packed with vector copies (README, "Tuning constants").
        return vector_isa && (narrow_panels ? wide : long_k) ? GemmBackend::packed
                                                             : GemmBackend::openblas;
      }
      // The transposed problem: M = input channels per group (few of them fill too few rows
      // of a tile; the openblas path with col2im is far ahead there), rows of in_width pixels,
      // K = filters per group * KH * KW.
      const bool fits = wide && s.in_width >= kMinPackedRowPixels && !is_conv1x1_s1_p0_d1(s);
      return vector_isa && fits ? GemmBackend::packed : GemmBackend::openblas;
    }
    case ConvPass::backward_weights: {
      // The openblas path's image runs, partial sums and reductions; the GEMM of each run on
      // the chosen backend: on the packed engine gemm::sgemm_nt_with, its B = col^T packed
      // straight from x where weights_fused_pack holds, else sgemm_nt on im2col blocks.
      // Automatic: packed wherever the fused pack applies (ahead on every such suite layer, on
      // 16- and 48-lane panels), and elsewhere for a K that amortises a tile's set-up and
      // planes of at least kMinPackedWeightsPixels output pixels. On 48-lane panels both only
      // where the GEMM's lane dimension (the taps with the fused pack; else the filters when
      // dW^T is accumulated, the taps otherwise) fills the 16-lane vectors that the tiles
      // compute (a panel's last tile computes one, two or three) to kMinWidePanelFill.
      if (o.backend != GemmBackend::automatic) return o.backend;
      const i64 Fg = s.out_channels / s.groups, K = s.in_channels / s.groups * khw;
      const bool fused = weights_fused_pack(s, o.isa);
      const i64 lanes = !fused && Fg <= kMaxFiltersTransposedWeights ? Fg : K;
      const bool fills = narrow_panels || lanes * kMinWidePanelFill.den >=
                                              round_up(lanes, kTileVector) * kMinWidePanelFill.num;
      const bool fits = fills && (fused || (K >= kMinPackedK && s.out_height() * s.out_width() >=
                                                                    kMinPackedWeightsPixels));
      return vector_isa && fits ? GemmBackend::packed : GemmBackend::openblas;
    }
  }
  return GemmBackend::openblas;
}

ConvPath conv_path(const Conv2dShape& s, ConvPass pass, const ConvOptions& o,
                   std::span<const float> w) {
  const bool direct = (is_depthwise(s) && s.in_channels > 1) || is_narrow_grouped(s);
  if (!direct || o.backend != GemmBackend::automatic || s.stride_width > kDwMaxStrideWidth) {
    return ConvPath::gemm;
  }
  const int p = pass == ConvPass::forward ? 0 : pass == ConvPass::backward_data ? 1 : 2;
  if (plan_depthwise(s, p, o.threads, o.isa, o.tuning).scratch_bytes() >
      kMaxScratchBytesPerThread) {
    return ConvPath::gemm;
  }
  if (pass == ConvPass::backward_data && !all_finite(w)) return ConvPath::gemm;
  // Narrow groups' backward data with AVX-512's OpenBLAS kernels: the GEMM path measured ahead
  // of the direct kernels; with AVX2 the direct kernels lead.
  if (pass == ConvPass::backward_data && !is_depthwise(s) && isa_clamp(o.isa) == Isa::avx512 &&
      !o.prefer_direct) {
    return ConvPath::gemm;
  }
  return ConvPath::depthwise;
}

ConvOptions forward_engine_options(const Conv2dShape& s, const ConvOptions& o) {
  if (o.backend != GemmBackend::automatic || isa_clamp(o.isa) != Isa::avx512 ||
      s.out_width() * kMinPackedRowPanelFraction >= gemm::config(Isa::avx512).nr) {
    return o;
  }
  ConvOptions narrow = o;
  narrow.isa = Isa::avx2;
  return s.batch > 1 && conv_backend(s, ConvPass::forward, narrow) == GemmBackend::packed ? narrow
                                                                                          : o;
}

void conv2d_forward_with(const ConvOptions& o_in, const Conv2dShape& s, std::span<const float> x,
                         std::span<const float> w, std::span<const float> bias, std::span<float> y,
                         Activation act) {
  const float* b = bias.empty() ? nullptr : bias.data();
  if (conv_path(s, ConvPass::forward, o_in) == ConvPath::depthwise) {
    return depthwise_forward(o_in.isa, o_in.threads, o_in.tuning, s, x.data(), w.data(), b,
                             y.data(), act);
  }
  const ConvOptions o = forward_engine_options(s, o_in);
  if (conv_backend(s, ConvPass::forward, o) == GemmBackend::packed) {
    PackedConv pc = packed_forward_problem(s);
    pc.x = x.data();
    pc.w = w.data();
    pc.bias = b;
    pc.y = y.data();
    pc.act = act;
    run_packed(pc, plan_packed(pc, o.isa, o.threads, o.tuning));
    return;
  }
  const ConvPlan p = plan_conv(s, ConvPass::forward, o.threads, o.tuning);
  if (!fits_blas_int(p)) return reference::conv2d_forward(s, x, w, bias, y, act);
  forward_impl(s, p, o.isa, x.data(), w.data(), b, y.data(), act);
}

namespace {

// The transformed weights of a packed backward-data call live in a buffer of the calling
// thread (the size of w), grown on demand and reused by its later calls.
thread_local std::vector<float> t_weights_bd;

struct WeightsFillCtx {
  const Conv2dShape* s;
  const float* w;
  float* wt;
};

void fill_backward_data_weights(const void* ctx, i64 t, i64 nthr) {
  const auto& c = *static_cast<const WeightsFillCtx*>(ctx);
  const i64 Cg = c.s->in_channels / c.s->groups;
  transform_weights_for_backward_data(*c.s, c.w, c.wt, part_begin(t, nthr, Cg),
                                      part_begin(t + 1, nthr, Cg));
}

}  // namespace

void conv2d_backward_data_with(const ConvOptions& o, const Conv2dShape& s,
                               std::span<const float> dy, std::span<const float> w,
                               std::span<float> dx, Activation input_activation,
                               std::span<const float> x) {
  const float* xp = x.empty() ? nullptr : x.data();
  if (conv_path(s, ConvPass::backward_data, o, w) == ConvPath::depthwise) {
    return depthwise_backward_data(o.isa, o.threads, o.tuning, s, dy.data(), w.data(), dx.data(),
                                   input_activation, xp);
  }
  // The packed engine computes dx as a 'full' correlation of dy where backward_data_transposed
  // holds; its zero border meets every weight: a non-finite weight would make cells NaN that
  // W^T dy leaves finite (0 * inf). Such weights, and the other shapes, take the col2im path
  // (which writes no padding cell: the reference's result) with the engine's GEMMs.
  const bool packed = conv_backend(s, ConvPass::backward_data, o) == GemmBackend::packed;
  if (packed && backward_data_transposed(s) && all_finite(w)) {
    if (t_weights_bd.size() < w.size())
      t_weights_bd.resize(w.size());  // may throw: nothing written yet
    PackedConv pc = packed_backward_data_problem(s);
    pc.x = dy.data();
    pc.w = t_weights_bd.data();
    pc.y = dx.data();
    pc.deriv = input_activation;
    pc.xd = xp;
    const WeightsFillCtx ctx{&s, w.data(), t_weights_bd.data()};
    run_packed(pc, plan_packed(pc, o.isa, o.threads, o.tuning), &fill_backward_data_weights, &ctx);
    return;
  }
  const ConvPlan p = plan_conv(s, ConvPass::backward_data, o.threads, o.tuning);
  if (!packed && !fits_blas_int(p)) {
    return reference::conv2d_backward_data(s, dy, w, dx, input_activation, x);
  }
  if (packed) {
    if (t_weights_bd.size() < w.size())
      t_weights_bd.resize(w.size());  // may throw: nothing written yet
    return backward_data_impl(s, p, o.isa, dy.data(), w.data(), dx.data(), input_activation, xp,
                              &gemm::config(o.isa), t_weights_bd.data());
  }
  backward_data_impl(s, p, o.isa, dy.data(), w.data(), dx.data(), input_activation, xp);
}

void conv2d_backward_weights_with(const ConvOptions& o, const Conv2dShape& s,
                                  std::span<const float> x, std::span<const float> dy,
                                  std::span<float> dw, std::span<float> db) {
  if (conv_path(s, ConvPass::backward_weights, o) == ConvPath::depthwise) {
    return depthwise_backward_weights(o.isa, o.threads, o.tuning, s, x.data(), dy.data(), dw.data(),
                                      db.empty() ? nullptr : db.data());
  }
  ConvPlan p = plan_conv(s, ConvPass::backward_weights, o.threads, o.tuning);
  const bool packed = conv_backend(s, ConvPass::backward_weights, o) == GemmBackend::packed;
  const bool fused = packed && (weights_fused_pack(s, o.isa) || weights_fused_phases(s, p, o.isa));
  if (fused) p.weights_transposed = false;
  if (!packed && !fits_blas_int(p)) return reference::conv2d_backward_weights(s, x, dy, dw, db);
  backward_weights_impl(s, p, o.isa, x.data(), dy.data(), dw.data(),
                        db.empty() ? nullptr : db.data(), packed ? &gemm::config(o.isa) : nullptr,
                        fused);
}

}  // namespace im2gemm::detail
