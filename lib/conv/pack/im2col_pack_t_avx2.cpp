// The transposed im2col packer of backward weights (im2col_pack.hpp): column-matrix rows
// (kernel taps) become the panel's lanes, output pixels its rows, read straight from the input
// without a column block. Compiled with -mavx2 -mfma (meson: the avx2 kernel library).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "conv/pack/im2col_pack.hpp"
#include "gemm/x86/transpose_avx2.hpp"

namespace im2gemm::detail {

namespace {

using i64 = std::int64_t;

// Lanes q of 8 with lo <= q < hi, as a maskload mask.
inline __m256i lanes_between(i64 lo, i64 hi) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i ge = _mm256_cmpgt_epi32(iota, _mm256_set1_epi32(static_cast<int>(lo - 1)));
  const __m256i lt = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(hi)), iota);
  return _mm256_and_si256(ge, lt);
}

// The float `floats` past `base`, formed as an integer: a tap's first pixel can lie before the
// input (its lanes are masked off, never read), where no pointer may point.
inline const float* at(std::uintptr_t base, i64 floats) {
  return reinterpret_cast<const float*>(base + static_cast<std::uintptr_t>(floats) * sizeof(float));
}

// Phases: x holds column phases (im2col_pack.hpp), rows of phase_width floats; a tap
// (c, kh, kw) reads plane (c, kw*DW % SW) from column ow + kw*DW / SW, no horizontal padding.
template <bool Phases>
void pack_transposed(const PackGeom& g, const float* x, i64 k0, i64 k1, i64 j0, i64 j1, int nr,
                     float* dst, i64 panel_stride) {
  const i64 khw = g.KH * g.KW, W = Phases ? phase_width(g) : g.W, plane = g.H * W;
  const i64 OW = g.OW, OH = g.OH;
  const auto base = reinterpret_cast<std::uintptr_t>(x);
  for (i64 p = 0; j0 + p * nr < j1; ++p) {
    float* d = dst + p * panel_stride;
    for (i64 l0 = 0; l0 < nr; l0 += 8) {
      // The 8 taps of this lane group: their offset from (ih0, iw0) of a pixel, their row and
      // column displacement; lanes past j1 read nothing (zero).
      i64 off[8], dh[8], dw[8];
      bool live[8];
      i64 dh_min = 0, dh_max = 0, dw_min = 0, dw_max = 0;
      bool all_live = true;
      for (int l = 0; l < 8; ++l) {
        const i64 j = j0 + p * nr + l0 + l;
        live[l] = j < j1;
        if (!live[l]) {
          all_live = false;
          off[l] = dh[l] = dw[l] = 0;
          continue;
        }
        const i64 c = j / khw, r = j % khw, kh = r / g.KW, kw = r % g.KW;
        dh[l] = kh * g.DH;
        if constexpr (Phases) {
          const i64 q = kw * g.DW;
          dw[l] = q / g.SW;
          off[l] = (c * g.SW + q % g.SW) * plane + dh[l] * W + dw[l];
        } else {
          dw[l] = kw * g.DW;
          off[l] = c * plane + dh[l] * W + dw[l];
        }
        dh_min = l == 0 ? dh[l] : std::min(dh_min, dh[l]);
        dh_max = l == 0 ? dh[l] : std::max(dh_max, dh[l]);
        dw_min = l == 0 ? dw[l] : std::min(dw_min, dw[l]);
        dw_max = l == 0 ? dw[l] : std::max(dw_max, dw[l]);
      }
      // The pixel kk = k0 as (image, oh, ow), then stepped (no division per chunk).
      const i64 P = OH * OW;
      i64 img = k0 / P, oh = (k0 % P) / OW, ow = k0 % OW;
      // Advances (img, oh, ow) by n pixels of one output row.
      auto step = [&](i64 n) {
        if ((ow += n) == OW) {
          ow = 0;
          if (++oh == OH) {
            oh = 0;
            ++img;
          }
        }
      };
      for (i64 kk = k0; kk < k1;) {
        // A run of whole 8-pixel chunks of this output row whose taps all lie inside the
        // input: plain loads from eight row pointers, no per-chunk checks (the checks and
        // the offsets reloaded from the stack were most of this packer's time on
        // vgg_conv1_2's 224-wide rows).
        if (all_live) {
          const i64 ih0 = oh * g.SH - g.PH, iw0 = Phases ? ow : ow - g.PW;
          const i64 left = std::min(OW - ow, k1 - kk);  // pixels of this row in the block
          const i64 room = std::min(left, W - dw_max - iw0);
          const i64 inside = ih0 + dh_min >= 0 && ih0 + dh_max < g.H && iw0 + dw_min >= 0
                                 ? std::max<i64>(room, 0)
                                 : 0;
          const i64 chunks = inside / 8;
          // The row's last pixels after its whole chunks, where they are inside too: one
          // masked load a tap (resnet_3x3s2's rows of 28 and alexnet_conv1's of 55 end in part of a
          // chunk, and the per-lane checks below cost several chunks).
          const i64 tail = inside == left ? inside % 8 : 0;
          if (chunks > 0 || tail > 0) {
            // Where the run is a whole output row, the next rows of the image whose taps lie
            // in the input and that the block holds whole go with it (lenet_conv2's 8-pixel
            // rows spent as much on this set-up per row as on their one transpose).
            i64 rows = 1;
            if (ow == 0 && inside == OW) {
              rows = std::min({(k1 - kk) / OW, OH - oh, (g.H - 1 - dh_max - ih0) / g.SH + 1});
            }
            const i64 pix = img * g.image_stride + ih0 * W + iw0;
            const float* src[8];
            for (int l = 0; l < 8; ++l) src[l] = at(base, pix + off[l]);
            float* drow = d + (kk - k0) * nr + l0;
            // Rows of whole chunks only keep the loop that has no tail (lenet_conv2's 8-pixel
            // rows measured 1% slower through one with a tail test).
            auto copy_rows = [&](auto with_tail) {
              for (i64 rr = 0; rr < rows; ++rr) {
                for (i64 ci = 0; ci < chunks; ++ci) {
                  __m256 r[8];
                  for (int l = 0; l < 8; ++l) r[l] = _mm256_loadu_ps(src[l] + 8 * ci);
                  transpose8x8_avx2(r);
                  for (int t = 0; t < 8; ++t) _mm256_store_ps(drow + (8 * ci + t) * nr, r[t]);
                }
                if constexpr (decltype(with_tail)::value) {
                  const __m256i tail_mask = lanes_between(0, tail);
                  __m256 r[8];
                  for (int l = 0; l < 8; ++l) {
                    r[l] = _mm256_maskload_ps(src[l] + 8 * chunks, tail_mask);
                  }
                  transpose8x8_avx2(r);
                  for (i64 t = 0; t < tail; ++t) {
                    _mm256_store_ps(drow + (8 * chunks + t) * nr, r[t]);
                  }
                }
                for (int l = 0; l < 8; ++l) src[l] += g.SH * W;
                drow += OW * nr;
              }
            };
            if (tail > 0) {
              copy_rows(std::true_type{});
            } else {
              copy_rows(std::false_type{});
            }
            const i64 run = 8 * chunks + tail;
            if (rows > 1) {  // whole rows: (img, oh, ow = 0) moves on by rows
              kk += rows * OW;
              if ((oh += rows) == OH) oh = 0, ++img;
            } else {
              kk += run;
              step(run);
            }
            continue;
          }
        }
        const i64 n = std::min({i64{8}, OW - ow, k1 - kk});  // pixels of one output row
        const i64 ih0 = oh * g.SH - g.PH, iw0 = Phases ? ow : ow - g.PW;
        const i64 pix = img * g.image_stride + ih0 * W + iw0;
        // Everything else (a whole chunk inside the input went to the run above): masked
        // loads, zero where a tap is dead or falls in the padding.
        __m256 r[8];
        for (int l = 0; l < 8; ++l) {
          const i64 ih = ih0 + dh[l], iw = iw0 + dw[l];
          if (!live[l] || ih < 0 || ih >= g.H) {
            r[l] = _mm256_setzero_ps();
            continue;
          }
          // Pixels t < n whose column iw + t lies in [0, W).
          const i64 lo = std::clamp<i64>(-iw, 0, 8), hi = std::clamp<i64>(W - iw, lo, n);
          r[l] = _mm256_maskload_ps(at(base, pix + off[l]), lanes_between(lo, hi));
        }
        transpose8x8_avx2(r);
        float* drow = d + (kk - k0) * nr + l0;
        for (i64 t = 0; t < n; ++t) _mm256_store_ps(drow + t * nr, r[t]);
        kk += n;
        step(n);
      }
    }
  }
}

}  // namespace

void pack_im2col_transposed_avx2(const PackGeom& g, const float* x, i64 k0, i64 k1, i64 j0, i64 j1,
                                 int nr, float* dst, i64 panel_stride) {
  pack_transposed<false>(g, x, k0, k1, j0, j1, nr, dst, panel_stride);
}

void pack_phases_transposed_avx2(const PackGeom& g, const float* xs, i64 k0, i64 k1, i64 j0, i64 j1,
                                 int nr, float* dst, i64 panel_stride) {
  pack_transposed<true>(g, xs, k0, k1, j0, j1, nr, dst, panel_stride);
}

}  // namespace im2gemm::detail
