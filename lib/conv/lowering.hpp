// Internal: the memory-bound kernels around sgemm (im2col, col2im, bias + activation, dy
// gathering, bias-gradient sums). Each is compiled for AVX-512, AVX2 and baseline x86-64 and
// picked at load time (GCC target_clones), so one libim2gemm.a runs on any x86-64.
#pragma once

#include <cstdint>

#include "common/isa.hpp"
#include "im2gemm/common.hpp"
#include "im2gemm/conv2d.hpp"

namespace im2gemm::detail {

/// Geometry of one image plane and the kernel, as the lowering kernels need it.
struct ConvGeom {
  std::int64_t H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW;
  /// Whose im2col / col2im kernels run: this ISA's hand-written ones where they measured
  /// ahead of the portable (target_clones) loops, which run everywhere else and on every shape
  /// under Isa::scalar. Clamped to the CPU; a call's ConvOptions::isa, else the process's.
  Isa isa;
  explicit ConvGeom(const Conv2dShape& s, Isa lowering = isa_active())
      : H(s.in_height), W(s.in_width), OH(s.out_height()), OW(s.out_width()), KH(s.kernel_height),
        KW(s.kernel_width), SH(s.stride_height), SW(s.stride_width), PH(s.pad_height),
        PW(s.pad_width), DH(s.dilation_height), DW(s.dilation_width), isa(isa_clamp(lowering)) {}
};

/// Column block of one image: for nch channels starting at plane x (H*W floats each) and
/// output pixels [q0, q1) of the image, row (c*KH + kh)*KW + kw of col (row stride ldcol)
/// gets x[c][oh*SH-PH+kh*DH][ow*SW-PW+kw*DW] (0 in the padding) at column p - q0.
/// Every element of the (nch*KH*KW) x (q1-q0) block is written.
void im2col_block(const ConvGeom& g, const float* x, std::int64_t nch, std::int64_t q0,
                  std::int64_t q1, float* col, std::int64_t ldcol);

/// True when im2col_block takes the small-plane kernel for this block (AVX-512 CPU, the
/// AVX-512 kernels allowed, H*W <= 64 and KH*KW*ceil((q1-q0)/16) <= 256): a whole input plane
/// in registers, each 16-pixel chunk one permute. Exposed for the tests.
bool im2col_small_plane(const ConvGeom& g, std::int64_t q0, std::int64_t q1);

/// True when col2im_add_block takes the small-plane kernel (the im2col condition, and
/// KH*KW*ceil((q1-q0)/16)*ceil(H*W/16) <= 256): the dx plane accumulated in registers.
bool col2im_small_plane(const ConvGeom& g, std::int64_t q0, std::int64_t q1);

/// The adjoint of im2col_block: ADDS every in-image element of the column block into dx
/// (nch planes of H*W floats). Padding positions are dropped. col is scratch: it may be left
/// modified (strided kernels fold kernel columns into one another first).
void col2im_add_block(const ConvGeom& g, float* col, std::int64_t ldcol, std::int64_t nch,
                      std::int64_t q0, std::int64_t q1, float* dx);

/// True where col2im_gather_rows applies: on AVX-512, stride 1 or horizontal stride 2 or 4
/// (any vertical stride); on AVX2, horizontal stride 2 or 4.
bool col2im_gathers(const ConvGeom& g);

/// col2im of whole output rows [o0, o1) of an image (the column block: nch channels' KH*KW rows
/// of (o1 - o0) * OW pixels, row stride ldcol; o1 <= OH) into dx (nch planes), each dx row
/// gathered from its taps and stored once: a row that no earlier output row reaches is
/// OVERWRITTEN (no zeroing beforehand), one that an earlier output row reaches is added to,
/// and one that no later output row reaches is complete and multiplied by act'(x) (x: the
/// same planes of the layer input; may be null for identity). The call with o0 == 0 also
/// zeroes the rows no output row reaches. So calls over consecutive blocks from o0 = 0 to
/// OH give col2im with act' applied. Returns false, writing nothing, where
/// col2im_gathers(g) is false; the caller then zeroes and uses col2im_add_block.
bool col2im_gather_rows(const ConvGeom& g, const float* col, std::int64_t ldcol, std::int64_t nch,
                        std::int64_t o0, std::int64_t o1, float* dx, Activation act,
                        const float* x);

/// rows x cols block of y (row stride ldy), in place: y = act(y + bias[r]); bias may be null.
void bias_act_rows(float* y, std::int64_t ldy, std::int64_t rows, std::int64_t cols,
                   const float* bias, Activation act);
/// rows x cols block of y (row stride ldy): y[r][i] = values[r].
void fill_rows(float* y, std::int64_t ldy, std::int64_t rows, std::int64_t cols,
               const float* values);
/// dst[i] = act(src[i] + b) for i < n.
void bias_act_copy(float* dst, const float* src, std::int64_t n, float b, Activation act);
/// d[i] *= act'(from y[i]) for i < n (the seed's activator.backward on the layer input).
void act_backward(Activation act, const float* y, float* d, std::int64_t n);
/// Sum of v[0..n) in float, 16 interleaved partial sums combined in a fixed order.
float sum_floats(const float* v, std::int64_t n);
/// dst[i] = src[i] for i < n.
void copy_floats(float* dst, const float* src, std::int64_t n);
/// d[i] += s[i] for i < n.
void add_floats(float* d, const float* s, std::int64_t n);

}  // namespace im2gemm::detail
