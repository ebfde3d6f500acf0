// The portable packer compiled with -mavx2 -mfma: the copies vectorise.
#include "conv/pack/im2col_pack.hpp"

namespace im2gemm::detail {
#define PACK_FN_NAME pack_im2col_avx2
#include "conv/pack/im2col_pack_generic.inc"
#undef PACK_FN_NAME
}  // namespace im2gemm::detail
