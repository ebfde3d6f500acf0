// The packed GEMM engine: every configured micro-kernel against the reference kernel on every
// tile shape, the im2col packers against the plain lowering, the driver against OpenBLAS.
#include <cblas.h>
#include <algorithm>

#include <limits>

#include "conv/pack/im2col_pack.hpp"
#include "gemm/gemm.hpp"
#include "test_util.hpp"

namespace {

using im2gemm::detail::Isa;
namespace gemm = im2gemm::detail::gemm;
using std::int64_t;

using testutil::cpu_isas;

// 64-byte aligned float buffer.
struct Aligned {
  std::vector<float> store;
  float* p;
  explicit Aligned(std::size_t n, float fill) : store(n + 16, fill) {
    auto addr = reinterpret_cast<std::uintptr_t>(store.data());
    p = store.data() + ((64 - addr % 64) % 64) / 4;
  }
};

// The segments and lane ranges of a block of columns [j0, j1) (build_pack_segments).
struct BlockSegments {
  std::vector<im2gemm::detail::PackSegment> segs;
  std::vector<im2gemm::detail::LaneRange> ranges;
  int64_t n = 0;
  BlockSegments(const im2gemm::detail::PackGeom& g, int64_t j0, int64_t j1, int nr, int64_t stride)
      : segs(static_cast<std::size_t>(im2gemm::detail::max_pack_segments(j1 - j0))),
        ranges(segs.size() * static_cast<std::size_t>(g.KW)) {
    n = im2gemm::detail::build_pack_segments(g, j0, j1, nr, stride, segs.data(), ranges.data());
  }
};

// Uniform integers in [lo, hi] drawn from rng.
auto picker(std::mt19937& rng) {
  return [&rng](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
}

// Element (kk, j) of the lowered matrix of images x (channel-major, g.image_stride floats
// apart: g.C * H * W), by its definition.
float lowered_at(const im2gemm::detail::PackGeom& g, const std::vector<float>& x, int64_t kk,
                 int64_t j) {
  const int64_t P = g.OH * g.OW, n = j / P, oh = j % P / g.OW, ow = j % g.OW;
  const int64_t c = kk / (g.KH * g.KW), kh = kk % (g.KH * g.KW) / g.KW, kw = kk % g.KW;
  const int64_t ih = oh * g.SH - g.PH + kh * g.DH, iw = ow * g.SW - g.PW + kw * g.DW;
  if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return 0.0f;
  return x[static_cast<std::size_t>(((n * g.C + c) * g.H + ih) * g.W + iw)];
}

// Every lane of the packed panels of columns [j0, j1), rows [k0, k1) (panel p at
// p * stride, row kk at + (kk - k0) * nr) holds the lowered matrix's element, lanes past j1
// zero, and the gap between a panel's rows and the next panel is untouched (NaN).
bool panels_hold_lowered(const im2gemm::detail::PackGeom& g, const std::vector<float>& x,
                         const float* dst, int64_t j0, int64_t j1, int64_t k0, int64_t k1, int nr,
                         int64_t stride) {
  const int64_t panels = (j1 - j0 + nr - 1) / nr;
  for (int64_t p = 0; p < panels; ++p) {
    for (int64_t kk = k0; kk < k1; ++kk) {
      for (int64_t l = 0; l < nr; ++l) {
        const int64_t j = j0 + p * nr + l;
        const float want = j < j1 ? lowered_at(g, x, kk, j) : 0.0f;
        const float got = dst[p * stride + (kk - k0) * nr + l];
        if (!(got == want)) {
          INFO("panel " << p << " row " << kk << " lane " << l << " got " << got << " want "
                        << want);
          CHECK(got == want);
          return false;
        }
      }
    }
    for (int64_t e = (k1 - k0) * nr; e < stride; ++e) {
      if (!std::isnan(dst[p * stride + e])) return false;
    }
  }
  return true;
}

}  // namespace

TEST_CASE(
    "gemm: every micro-kernel equals the reference on every m <= MR, n <= NR, k over blocks") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (Isa isa : cpu_isas()) {
    const gemm::Config& cfg = gemm::config(isa);
    CAPTURE(cfg.name);
    REQUIRE(cfg.isa == isa);
    const int mr = cfg.mr, nr = cfg.nr;
    for (int64_t k : {int64_t{1}, int64_t{2}, int64_t{7}, cfg.kc, cfg.kc + 1}) {
      const int64_t lda = k + 3, ldc = nr + 5;
      const auto a = testutil::random_ints(static_cast<std::size_t>(mr * lda), 11 + k);
      const auto bias = testutil::random_ints(static_cast<std::size_t>(mr), 13 + k);
      Aligned b(static_cast<std::size_t>(k * nr), 0.0f);
      const auto bv = testutil::random_ints(static_cast<std::size_t>(k * nr), 17 + k);
      std::copy(bv.begin(), bv.end(), b.p);
      const auto c0 = testutil::random_ints(static_cast<std::size_t>(mr * ldc), 19 + k);
      for (int m = 1; m <= mr; ++m) {
        for (int n = 1; n <= nr; ++n) {
          for (int mode = 0; mode < 4; ++mode) {  // zero, bias, accumulate, accumulate + relu
            // C outside the tile is NaN: it must be neither read nor written. Rows of A past
            // m are NaN too: they must not reach the stored rows.
            std::vector<float> got(static_cast<std::size_t>(mr * ldc), nan);
            std::vector<float> want(got.size(), nan);
            for (int i = 0; i < m; ++i) {
              for (int j = 0; j < n; ++j) got[i * ldc + j] = want[i * ldc + j] = c0[i * ldc + j];
            }
            std::vector<float> am(a);
            for (int64_t e = m * lda; e < mr * lda; ++e) am[static_cast<std::size_t>(e)] = nan;
            gemm::Tile t;
            t.a = am.data();
            t.lda = lda;
            t.b = b.p;
            t.k = k;
            t.ldc = ldc;
            t.m = m;
            t.n = n;
            t.bias = mode == 1 ? bias.data() : nullptr;
            t.accumulate = mode >= 2;
            t.relu = mode == 3;
            t.c = want.data();
            gemm::ukernel_ref(t, nr);
            t.c = got.data();
            cfg.ukernel(t);
            INFO("m " << m << " n " << n << " k " << k << " mode " << mode);
            REQUIRE(testutil::bitwise_equal(got, want));
          }
        }
      }
    }
  }
}

TEST_CASE("gemm: the packed driver equals OpenBLAS sgemm on odd shapes") {
  for (Isa isa : cpu_isas()) {
    CAPTURE(im2gemm::detail::isa_name(isa));
    for (const auto& mnk : {std::array<int64_t, 3>{1, 1, 1},
                            {7, 50, 3},
                            {17, 97, 300},
                            {33, 200, 513},
                            {9, 1000, 40},
                            {5, 3001, 700}}) {  // several K blocks, several B blocks a thread
      const int64_t m = mnk[0], n = mnk[1], k = mnk[2];  // clang 14 cannot capture a binding
      CAPTURE(m);
      CAPTURE(n);
      CAPTURE(k);
      const auto a = testutil::random_floats(static_cast<std::size_t>(m * k), 3);
      const auto b = testutil::random_floats(static_cast<std::size_t>(k * n), 5);
      std::vector<float> got(static_cast<std::size_t>(m * n), -1.0f), want(got.size(), 0.0f);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m),
                  static_cast<int>(n), static_cast<int>(k), 1.0f, a.data(), static_cast<int>(k),
                  b.data(), static_cast<int>(n), 0.0f, want.data(), static_cast<int>(n));
      for (int threads : {1, 2, 3}) {  // each thread's share of the columns, all written
        CAPTURE(threads);
        std::fill(got.begin(), got.end(), std::numeric_limits<float>::quiet_NaN());
        gemm::sgemm_packed(isa, m, n, k, a.data(), k, b.data(), n, got.data(), n, threads);
        CHECK_CLOSE_SPANS(got, want, 1e-4f, 1e-4f);
      }
    }
  }
}

TEST_CASE("gemm: the packed driver on empty shapes: nothing for m or n of 0, zeros for k of 0") {
  for (Isa isa : cpu_isas()) {
    CAPTURE(im2gemm::detail::isa_name(isa));
    const std::vector<float> a(12, 1.0f), b(12, 1.0f);
    std::vector<float> c(12, 7.0f);
    for (int threads : {1, 2}) {
      gemm::sgemm_packed(isa, 0, 3, 4, a.data(), 4, b.data(), 3, c.data(), 3, threads);
      gemm::sgemm_packed(isa, 4, 0, 3, a.data(), 3, b.data(), 1, c.data(), 1, threads);
      CHECK(std::count(c.begin(), c.end(), 7.0f) == 12);
      gemm::sgemm_packed(isa, 2, 3, 0, a.data(), 1, b.data(), 3, c.data(), 4, threads);
      // Rows of 4 floats, 3 of them C's: zeros there, the fourth untouched.
      CHECK(std::vector<float>(c.begin(), c.begin() + 8) ==
            std::vector<float>{0, 0, 0, 7, 0, 0, 0, 7});
      std::fill(c.begin(), c.end(), 7.0f);
    }
  }
}

TEST_CASE(
    "gemm: sgemm_nt (transposing B pack) equals OpenBLAS on odd shapes, overwrite and accumulate") {
  for (Isa isa : cpu_isas()) {
    const gemm::Config& cfg = gemm::config(isa);
    CAPTURE(cfg.name);
    Aligned pack(static_cast<std::size_t>(gemm::nt_pack_floats(cfg)), 0.0f);
    for (const auto& mnk : {std::array<int64_t, 3>{1, 1, 1},
                            {9, 50, 3},
                            {17, 97, 300},
                            {8, 500, 257},
                            {33, 20, 1000}}) {
      const int64_t m = mnk[0], n = mnk[1], k = mnk[2];  // clang 14 cannot capture a binding
      CAPTURE(m);
      CAPTURE(n);
      CAPTURE(k);
      const int64_t lda = k + 1, ldx = k + 3, ldc = n + 2;
      const auto a = testutil::random_ints(static_cast<std::size_t>(m * lda), 3);
      const auto x = testutil::random_ints(static_cast<std::size_t>(n * ldx), 5);
      for (bool accumulate : {false, true}) {
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::vector<float> got(static_cast<std::size_t>(m * ldc), nan);
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j)
            got[static_cast<std::size_t>(i * ldc + j)] = accumulate ? 2.0f : nan;
        }
        std::vector<float> want(got);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
                    static_cast<int>(n), static_cast<int>(k), 1.0f, a.data(), static_cast<int>(lda),
                    x.data(), static_cast<int>(ldx), accumulate ? 1.0f : 0.0f, want.data(),
                    static_cast<int>(ldc));
        gemm::sgemm_nt(cfg, m, n, k, a.data(), lda, x.data(), ldx, got.data(), ldc, accumulate,
                       pack.p);
        // Integer data: exact; the padding columns of C (NaN) untouched.
        CHECK(testutil::bitwise_equal(got, want));
      }
    }
  }
}

TEST_CASE("gemm: the row-major B packers fill every lane of every panel, zero past j1") {
  // pack_b_rows (portable) and pack_b_rows_avx2 (whole panels of 16 or 48 lanes in vectors,
  // the panel reaching past j1 and other widths by the portable copy), on every panel width
  // configured and a width neither handles; the gap after each panel's rows stays NaN.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<Isa> isas = cpu_isas();
  const bool avx2 = std::find(isas.begin(), isas.end(), Isa::avx2) != isas.end();
  const int64_t ldb = 131;
  const auto b = testutil::random_ints(static_cast<std::size_t>(40 * ldb), 7);
  for (int nr : {4, 8, 16, 48}) {
    for (const auto& kj : {std::array<int64_t, 4>{0, 1, 0, 1},
                           {3, 40, 5, 5 + 2 * 48},
                           {0, 17, 2, 2 + 3 * 16 + 7},
                           {7, 9, 0, 131},
                           {1, 33, 100, 129}}) {
      const int64_t k0 = kj[0], k1 = kj[1], j0 = kj[2], j1 = kj[3];
      const int64_t stride = (k1 - k0) * nr + 5, panels = (j1 - j0 + nr - 1) / nr;
      for (int variant = 0; variant < (avx2 ? 2 : 1); ++variant) {
        CAPTURE(nr);
        CAPTURE(k0);
        CAPTURE(j0);
        CAPTURE(j1);
        CAPTURE(variant);
        std::vector<float> got(static_cast<std::size_t>(panels * stride), nan);
        (variant == 0 ? gemm::pack_b_rows : gemm::pack_b_rows_avx2)(b.data(), ldb, k0, k1, j0, j1,
                                                                    nr, got.data(), stride);
        bool ok = true;
        for (int64_t p = 0; p < panels && ok; ++p) {
          for (int64_t kk = k0; kk < k1 && ok; ++kk) {
            for (int64_t l = 0; l < nr && ok; ++l) {
              const int64_t j = j0 + p * nr + l;
              const float want = j < j1 ? b[static_cast<std::size_t>(kk * ldb + j)] : 0.0f;
              const float v = got[static_cast<std::size_t>(p * stride + (kk - k0) * nr + l)];
              if (!(v == want)) {
                INFO("panel " << p << " row " << kk << " lane " << l);
                CHECK(v == want);
                ok = false;
              }
            }
          }
          for (int64_t e = (k1 - k0) * nr; e < stride && ok; ++e) {
            ok = std::isnan(got[static_cast<std::size_t>(p * stride + e)]);
          }
        }
        CHECK(ok);
      }
    }
  }
}

TEST_CASE("gemm: the im2col packers fill every lane of every panel with the lowered matrix") {
  // Every packer against the definition of the lowered matrix on odd geometries, blocks that
  // cross output rows, images and panels, and negative pads (backward data's cropping).
  std::mt19937 rng(7);
  const auto pick = picker(rng);
  // Every other geometry has rows of a multiple of 8 pixels at stride 1 and a block starting
  // on a panel and ending on a half panel: the AVX2 packer's segment-major loop (whole
  // aligned half panels).
  int tried = 0, halves = 0;
  while (tried < 300) {
    const bool aligned = tried % 2 == 0;
    const int64_t N = pick(1, 3), C = pick(1, 3), KH = pick(1, 5), KW = pick(1, 5);
    const int64_t SH = pick(1, 3), SW = aligned ? 1 : pick(1, 5), DH = pick(1, 2), DW = pick(1, 2);
    const int64_t PH = pick(-2, 3), PW = pick(-2, 3), H = pick(1, 12);
    const int64_t W = aligned ? 8 * pick(1, 5) + (KW - 1) * DW - 2 * PW : pick(1, 50);
    if (W < 1) continue;
    const int64_t eh = H + 2 * PH - ((KH - 1) * DH + 1), ew = W + 2 * PW - ((KW - 1) * DW + 1);
    if (eh < 0 || ew < 0) continue;
    ++tried;
    const int64_t OH = eh / SH + 1, OW = ew / SW + 1, P = OH * OW, HW = H * W, K = C * KH * KW;
    const im2gemm::detail::PackGeom pg{C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, C * HW};
    const auto x = testutil::random_ints(static_cast<std::size_t>(N * C * HW), 100 + tried);
    const int64_t cols = N * P;
    for (Isa isa : cpu_isas()) {
      const int nr = gemm::config(isa).nr;
      INFO("N" << N << " C" << C << " " << H << "x" << W << " k" << KH << "x" << KW << " s" << SH
               << "x" << SW << " p" << PH << "x" << PW << " d" << DH << "x" << DW << " "
               << im2gemm::detail::isa_name(isa));
      int64_t j0 = pick(0, cols - 1), j1 = pick(j0 + 1, cols);
      if (aligned) {
        j0 = pick(0, (cols - 1) / 16) * 16;
        j1 = std::min(cols, j0 + 8 * pick(1, 12));
      }
      const int64_t k0 = pick(0, K - 1), k1 = pick(k0 + 1, K);
      // One spare panel row past each panel (NaN, never written); the vector packers read
      // panel and lane from the destination offset, so the stride is a multiple of nr.
      const int64_t panels = (j1 - j0 + nr - 1) / nr, stride = (k1 - k0 + 1) * nr;
      const BlockSegments bs(pg, j0, j1, nr, stride);
      const auto& segs = bs.segs;
      const int64_t nseg = bs.n;
      REQUIRE(nseg <= static_cast<int64_t>(segs.size()));
      bool all_halves = nr == 16 && SW == 1, some_half = false;
      for (int64_t sg = 0; sg < nseg; ++sg) {
        const int64_t f = segs[sg].dst % 16, len = segs[sg].len;
        all_halves = all_halves && ((f == 0 && len == 16) || ((f == 0 || f == 8) && len == 8));
        some_half = some_half || len == 8;
      }
      halves += isa != Isa::scalar && all_halves && some_half;
      Aligned dst(static_cast<std::size_t>(panels * stride),
                  std::numeric_limits<float>::quiet_NaN());
      im2gemm::detail::pack_im2col_fn(isa)(pg, x.data(), segs.data(), bs.ranges.data(), nseg, k0,
                                           k1, nr, dst.p);
      CHECK(panels_hold_lowered(pg, x, dst.p, j0, j1, k0, k1, nr, stride));
    }
  }
  MESSAGE(halves << " blocks of whole aligned half panels on a vector ISA");
  if (im2gemm::detail::isa_active() != Isa::scalar) CHECK(halves > 30);
}

TEST_CASE("gemm: the column-phase packers fill every lane of every panel with the lowered matrix") {
  // Horizontal strides 2..5 (forward pads >= 0): split one image into column phases, pack a
  // block of its columns, compare with the definition of the lowered matrix. Widths up to 70
  // reach the AVX2 split's 16-float steps at stride 2 on both sides of the padding; every
  // fourth geometry is stride 2 over 70-110 columns, so that runs of more than 32 pixels
  // reach the third vector of AVX-512's 48-lane panels.
  std::mt19937 rng(11);
  const auto pick = picker(rng);
  int tried = 0, vector_split = 0, long_runs = 0;
  while (tried < 300) {
    const bool wide = tried % 4 == 3;
    const int64_t N = pick(1, 3), C = pick(1, 3), KH = pick(1, 5), KW = pick(1, 7);
    const int64_t SH = pick(1, 3), SW = wide ? 2 : pick(2, 5), DH = pick(1, 2), DW = pick(1, 2);
    const int64_t PH = pick(0, 3), PW = pick(0, 3), H = pick(1, 12);
    const int64_t W = wide ? pick(70, 110) : pick(1, 70);
    const int64_t eh = H + 2 * PH - ((KH - 1) * DH + 1), ew = W + 2 * PW - ((KW - 1) * DW + 1);
    if (eh < 0 || ew < 0) continue;
    ++tried;
    const int64_t OH = eh / SH + 1, OW = ew / SW + 1, P = OH * OW, HW = H * W, K = C * KH * KW;
    const im2gemm::detail::PackGeom pg{C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, C * HW};
    vector_split += SW == 2 && W >= 16 + PW;
    const auto x = testutil::random_ints(static_cast<std::size_t>(N * C * HW), 500 + tried);
    for (Isa isa : cpu_isas()) {
      const im2gemm::detail::PhasePacker phases = im2gemm::detail::phase_packer(isa);
      if (phases.pack == nullptr) continue;
      const int nr = gemm::config(isa).nr;
      INFO("C" << C << " " << H << "x" << W << " k" << KH << "x" << KW << " s" << SH << "x" << SW
               << " p" << PH << "x" << PW << " d" << DH << "x" << DW << " "
               << im2gemm::detail::isa_name(isa));
      // A block of one image's columns, as the executor packs it.
      const int64_t n = pick(0, N - 1), a = pick(0, P - 1), b = pick(a + 1, P);
      const int64_t j0 = n * P + a, j1 = n * P + b;
      const int64_t k0 = pick(0, K - 1), k1 = pick(k0 + 1, K);
      const int64_t panels = (j1 - j0 + nr - 1) / nr, stride = (k1 - k0 + 1) * nr;
      BlockSegments bs(pg, j0, j1, nr, stride);
      im2gemm::detail::to_phase_segments(pg, bs.segs.data(), bs.n);
      // Exactly sized (the sanitizer builds catch a read or write past it); every float set.
      std::vector<float> xs(static_cast<std::size_t>(im2gemm::detail::phase_floats(pg)),
                            std::numeric_limits<float>::quiet_NaN());
      phases.split(pg, x.data() + n * C * HW, xs.data());
      CHECK(std::none_of(xs.begin(), xs.end(), [](float v) { return std::isnan(v); }));
      Aligned dst(static_cast<std::size_t>(panels * stride),
                  std::numeric_limits<float>::quiet_NaN());
      phases.pack(pg, xs.data(), bs.segs.data(), bs.n, k0, k1, nr, dst.p);
      CHECK(panels_hold_lowered(pg, x, dst.p, j0, j1, k0, k1, nr, stride));
      for (int64_t sg = 0; sg < bs.n; ++sg) long_runs += nr == 48 && bs.segs[sg].len > 32;
    }
  }
  MESSAGE(vector_split << " geometries reach the AVX2 split's 16-float steps; " << long_runs
                       << " runs of more than 32 lanes on 48-lane panels");
  CHECK(vector_split > 30);
  if (im2gemm::detail::isa_supported() == Isa::avx512) CHECK(long_runs > 30);
}
