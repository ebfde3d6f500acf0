// im2gemm_idx: a reader for IDX data files (LeCun's MNIST format), gzipped or plain, such as
// Fashion-MNIST. A separate library (libim2gemm_idx.a, pkg-config im2gemm_idx, CMake target
// im2gemm::im2gemm_idx) because it alone needs zlib; the core library does not.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace im2gemm {

/// An IDX file of unsigned bytes (type 0x08), as MNIST and Fashion-MNIST ship them.
struct IdxArray {
  std::vector<std::int64_t> dims;
  std::vector<std::uint8_t> values;  ///< row-major, product of dims
};
/// Reads an IDX file, gzipped or not (zlib reads both). Checks the magic (0 0 0x08 rank, rank
/// 1..4), that every dim is >= 1, and that the payload has exactly the size the dims give.
/// Throws std::invalid_argument naming the file and what is wrong (missing, not IDX, wrong
/// type, truncated, trailing data, broken gzip stream).
IdxArray read_idx(const std::string& path);

/// Images and their labels, e.g. one split of Fashion-MNIST.
struct LabeledImages {
  std::int64_t count = 0, rows = 0, cols = 0;
  std::vector<std::uint8_t> pixels;  ///< [count][rows][cols]
  std::vector<std::int32_t> labels;  ///< [count], each in [0, 9]
};
/// Reads <dir>/<split>-images-idx3-ubyte.gz and <dir>/<split>-labels-idx1-ubyte.gz (split
/// "train" or "t10k"), checks that counts agree and labels are 0..9. Every error message also
/// says how to get the data: `apt-get install dataset-fashion-mnist`, which installs it under
/// /usr/share/datasets/fashion-mnist/.
LabeledImages read_mnist(const std::string& dir, const std::string& split);

}  // namespace im2gemm
