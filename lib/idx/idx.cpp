// IDX files (LeCun's MNIST format), gzipped or plain, read through zlib's gz* functions.
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

#include "im2gemm/idx.hpp"

namespace im2gemm {

namespace {

constexpr std::int64_t kMaxBytes = std::int64_t{1} << 34;  // 16 GiB: larger is a broken header

struct GzCloser {
  void operator()(gzFile f) const { gzclose(f); }
};
using Gz = std::unique_ptr<std::remove_pointer_t<gzFile>, GzCloser>;

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw std::invalid_argument("im2gemm: IDX file " + path + ": " + what);
}

/// Reads exactly n bytes; false if the stream ended first. Throws on a gzip error.
bool read_exact(gzFile f, const std::string& path, std::uint8_t* dst, std::size_t n) {
  while (n > 0) {
    const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(n, 1u << 26));
    const int got = gzread(f, dst, chunk);
    if (got < 0) {
      int code = 0;
      const char* msg = gzerror(f, &code);
      bad(path, std::string("broken gzip data (") + (msg ? msg : "unknown error") + ")");
    }
    if (got == 0) {
      int code = 0;
      const char* msg = gzerror(f, &code);
      if (code != Z_OK && code != Z_STREAM_END) {
        bad(path, std::string("broken gzip data (") + (msg ? msg : "unknown error") + ")");
      }
      return false;
    }
    dst += got;
    n -= static_cast<std::size_t>(got);
  }
  return true;
}

}  // namespace

IdxArray read_idx(const std::string& path) {
  errno = 0;
  Gz f(gzopen(path.c_str(), "rb"));
  if (!f)
    bad(path,
        std::string("cannot open (") + (errno ? std::strerror(errno) : "out of memory") + ")");
  std::uint8_t head[4];
  if (!read_exact(f.get(), path, head, 4)) bad(path, "truncated: shorter than the 4-byte magic");
  if (head[0] != 0 || head[1] != 0) {
    char m[96];
    std::snprintf(m, sizeof m,
                  "wrong magic %02x %02x %02x %02x: not an IDX file (expected 00 00 08 <rank>)",
                  head[0], head[1], head[2], head[3]);
    bad(path, m);
  }
  if (head[2] != 0x08) {
    char m[96];
    std::snprintf(m, sizeof m, "element type 0x%02x is not supported (only unsigned bytes, 0x08)",
                  head[2]);
    bad(path, m);
  }
  const int rank = head[3];
  if (rank < 1 || rank > 4) bad(path, "rank " + std::to_string(rank) + " (supported: 1 to 4)");
  IdxArray a;
  std::int64_t total = 1;
  for (int i = 0; i < rank; ++i) {
    std::uint8_t d[4];
    if (!read_exact(f.get(), path, d, 4))
      bad(path, "truncated in the header (dimension " + std::to_string(i) + ")");
    const std::int64_t v = (std::int64_t{d[0]} << 24) | (d[1] << 16) | (d[2] << 8) | d[3];
    if (v < 1)
      bad(path, "dimension " + std::to_string(i) + " is " + std::to_string(v) + " (must be >= 1)");
    a.dims.push_back(v);
    total *= v;
    if (total > kMaxBytes) bad(path, "dimensions give more than 2^34 bytes: a broken header");
  }
  // Read in chunks so a broken header cannot make us allocate before the data is there.
  std::size_t have = 0;
  const auto want = static_cast<std::size_t>(total);
  while (have < want) {
    const std::size_t chunk = std::min<std::size_t>(want - have, 1u << 24);
    a.values.resize(have + chunk);
    if (!read_exact(f.get(), path, a.values.data() + have, chunk)) {
      bad(path, "truncated: the header promises " + std::to_string(want) + " data bytes");
    }
    have += chunk;
  }
  std::uint8_t extra;
  const int more = gzread(f.get(), &extra, 1);
  if (more > 0)
    bad(path, "trailing data after the " + std::to_string(want) + " bytes the header gives");
  if (more < 0) {
    int code = 0;
    const char* msg = gzerror(f.get(), &code);
    bad(path, std::string("broken gzip data (") + (msg ? msg : "unknown error") + ")");
  }
  return a;
}

LabeledImages read_mnist(const std::string& dir, const std::string& split) {
  const std::string hint =
      ". The Fashion-MNIST files come with `apt-get install dataset-fashion-mnist` (under "
      "/usr/share/datasets/fashion-mnist/); or give the directory that holds them";
  if (split != "train" && split != "t10k") {
    throw std::invalid_argument("im2gemm: read_mnist: split must be \"train\" or \"t10k\", got \"" +
                                split + "\"");
  }
  const std::string images_path = dir + "/" + split + "-images-idx3-ubyte.gz";
  const std::string labels_path = dir + "/" + split + "-labels-idx1-ubyte.gz";
  IdxArray images, labels;
  try {
    images = read_idx(images_path);
    labels = read_idx(labels_path);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(e.what() + hint);
  }
  if (images.dims.size() != 3) {
    throw std::invalid_argument("im2gemm: " + images_path + " has rank " +
                                std::to_string(images.dims.size()) + ", images need 3" + hint);
  }
  if (labels.dims.size() != 1) {
    throw std::invalid_argument("im2gemm: " + labels_path + " has rank " +
                                std::to_string(labels.dims.size()) + ", labels need 1" + hint);
  }
  if (images.dims[0] != labels.dims[0]) {
    throw std::invalid_argument("im2gemm: " + images_path + " holds " +
                                std::to_string(images.dims[0]) + " images but " + labels_path +
                                " holds " + std::to_string(labels.dims[0]) + " labels" + hint);
  }
  LabeledImages out;
  out.count = images.dims[0];
  out.rows = images.dims[1];
  out.cols = images.dims[2];
  out.labels.resize(labels.values.size());
  for (std::size_t i = 0; i < labels.values.size(); ++i) {
    if (labels.values[i] > 9) {
      throw std::invalid_argument("im2gemm: " + labels_path + ": label " + std::to_string(i) +
                                  " is " + std::to_string(labels.values[i]) + ", must be 0..9" +
                                  hint);
    }
    out.labels[i] = labels.values[i];
  }
  out.pixels = std::move(images.values);
  return out;
}

}  // namespace im2gemm
