// Everything that needs zlib: the IDX reader (im2gemm_idx), and the core library's own
// CRC-32 against zlib's crc32, so that parameter files checksummed by zlib still load.
#include <zlib.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>

#include <im2gemm/idx.hpp>

#include "common/crc32.hpp"
#include "test_util.hpp"

using namespace im2gemm;
namespace fs = std::filesystem;

namespace {

void write_gz(const fs::path& p, const std::vector<std::uint8_t>& bytes) {
  gzFile f = gzopen(p.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) ==
          static_cast<int>(bytes.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

std::vector<std::uint8_t> idx_bytes(std::vector<std::uint32_t> dims, std::size_t payload,
                                    std::uint8_t type = 0x08) {
  std::vector<std::uint8_t> b{0, 0, type, static_cast<std::uint8_t>(dims.size())};
  for (auto d : dims) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<std::uint8_t>(d >> s));
  }
  for (std::size_t i = 0; i < payload; ++i)
    b.push_back(static_cast<std::uint8_t>((i * 7 + 3) % 10));
  return b;
}

std::uint32_t zlib_crc(const std::uint8_t* p, std::size_t n) {
  return static_cast<std::uint32_t>(crc32(crc32(0L, Z_NULL, 0), p, static_cast<uInt>(n)));
}

}  // namespace

TEST_CASE("IDX reader: valid gzipped files, wrong magic, truncated, trailing, broken gzip") {
  testutil::TempDir dir("idx");
  const auto p = [&](const char* name) { return (dir.path / name).string(); };

  write_gz(p("train-images-idx3-ubyte.gz"), idx_bytes({3, 4, 5}, 60));
  write_gz(p("train-labels-idx1-ubyte.gz"), idx_bytes({3}, 3));
  const auto a = read_idx(p("train-images-idx3-ubyte.gz"));
  CHECK(a.dims == std::vector<std::int64_t>{3, 4, 5});
  REQUIRE(a.values.size() == 60);
  CHECK(a.values[0] == 3);
  CHECK(a.values[59] == (59 * 7 + 3) % 10);
  const auto set = read_mnist(dir.path.string(), "train");
  CHECK(set.count == 3);
  CHECK(set.rows == 4);
  CHECK(set.cols == 5);
  CHECK(set.labels == std::vector<std::int32_t>{3, 0, 7});
  CHECK(set.pixels.size() == 60);

  // Plain (not gzipped) IDX reads too.
  {
    const auto b = idx_bytes({2, 2}, 4);
    std::ofstream(p("plain.idx"), std::ios::binary)
        .write(reinterpret_cast<const char*>(b.data()), 4 + 8 + 4);
    CHECK(read_idx(p("plain.idx")).dims == std::vector<std::int64_t>{2, 2});
  }
  auto msg = [&](const char* name) { return testutil::error_of([&] { read_idx(p(name)); }); };
  {
    auto b = idx_bytes({3}, 3);
    b[0] = 0x1f;
    write_gz(p("magic.gz"), b);
    CHECK(msg("magic.gz").find("wrong magic") != std::string::npos);
    write_gz(p("type.gz"), idx_bytes({3}, 3, 0x0d));
    CHECK(msg("type.gz").find("element type 0x0d") != std::string::npos);
    write_gz(p("short.gz"), idx_bytes({3, 4, 5}, 59));
    CHECK(msg("short.gz").find("truncated") != std::string::npos);
    write_gz(p("header.gz"), std::vector<std::uint8_t>{0, 0, 8, 3, 0, 0});
    CHECK(msg("header.gz").find("truncated in the header") != std::string::npos);
    write_gz(p("long.gz"), idx_bytes({3, 4, 5}, 61));
    CHECK(msg("long.gz").find("trailing data") != std::string::npos);
    write_gz(p("zero.gz"), idx_bytes({0}, 0));
    CHECK(msg("zero.gz").find("dimension 0 is 0") != std::string::npos);
  }
  {  // A gzip stream cut in half.
    std::ifstream in(p("train-images-idx3-ubyte.gz"), std::ios::binary);
    std::vector<char> gz((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(p("cut.gz"), std::ios::binary)
        .write(gz.data(), static_cast<std::streamsize>(gz.size() / 2));
    const std::string m = msg("cut.gz");
    INFO(m);
    CHECK((m.find("truncated") != std::string::npos || m.find("gzip") != std::string::npos));
  }
  // read_mnist: a missing file says what to install; mismatched counts are caught.
  const std::string missing =
      testutil::error_of([&] { read_mnist((dir.path / "nowhere").string(), "t10k"); });
  CHECK(missing.find("cannot open") != std::string::npos);
  CHECK(missing.find("t10k-images-idx3-ubyte.gz") != std::string::npos);
  CHECK(missing.find("apt-get install dataset-fashion-mnist") != std::string::npos);
  write_gz(p("train-labels-idx1-ubyte.gz"), idx_bytes({4}, 4));
  CHECK(testutil::error_of([&] {
          read_mnist(dir.path.string(), "train");
        }).find("holds 3 images but") != std::string::npos);
  CHECK_THROWS_AS(read_mnist(dir.path.string(), "validation"), std::invalid_argument);
}

TEST_CASE("read_mnist on the installed Fashion-MNIST test split, if present") {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(dir + "/t10k-images-idx3-ubyte.gz")) {
    MESSAGE("skipped: " << dir << " not installed (apt-get install dataset-fashion-mnist)");
    return;
  }
  const auto t = read_mnist(dir, "t10k");
  CHECK(t.count == 10000);
  CHECK(t.rows == 28);
  CHECK(t.cols == 28);
  CHECK(t.pixels.size() == 10000u * 784u);
  std::vector<int> per_class(10, 0);
  for (auto l : t.labels) ++per_class[static_cast<std::size_t>(l)];
  for (int c : per_class) CHECK(c == 1000);  // Fashion-MNIST's test split is balanced
}

TEST_CASE("detail::crc32 gives zlib's crc32 for every length and any split of the bytes") {
  std::mt19937 rng(5);
  std::vector<std::uint8_t> b(5000);
  for (auto& v : b) v = static_cast<std::uint8_t>(rng());
  for (std::size_t n : {0u, 1u, 2u, 3u, 7u, 8u, 15u, 16u, 255u, 256u, 1000u, 4097u, 5000u}) {
    INFO("n = " << n);
    CHECK(detail::crc32(0, b.data(), n) == zlib_crc(b.data(), n));
    const std::size_t cut = n / 3;
    CHECK(detail::crc32(detail::crc32(0, b.data(), cut), b.data() + cut, n - cut) ==
          zlib_crc(b.data(), n));
  }
}

TEST_CASE("parameter files: the checksum is the one zlib computed, so older files load") {
  Sequential net(Shape3{1, 6, 6});
  net.add_conv2d(4, 3, Activation::relu);
  net.add_maxpool2d(2);
  net.add_dense(3, Activation::identity);
  net.init(1);
  auto bytes = net.save_bytes();
  REQUIRE(bytes.size() > 4);
  const std::size_t n = bytes.size() - 4;
  const std::uint32_t zc = zlib_crc(bytes.data(), n);
  std::uint32_t stored = 0;
  for (int i = 0; i < 4; ++i)
    stored |= static_cast<std::uint32_t>(bytes[n + static_cast<std::size_t>(i)]) << (8 * i);
  CHECK(stored == zc);
  // A file written by zlib's crc32 (the same bytes, its checksum put in by zlib) loads.
  bytes.resize(n);
  for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<std::uint8_t>(zc >> (8 * i)));
  Sequential other(Shape3{1, 6, 6});
  other.add_conv2d(4, 3, Activation::relu);
  other.add_maxpool2d(2);
  other.add_dense(3, Activation::identity);
  other.init(2);
  other.load_bytes(bytes);
  CHECK(other.save_bytes() == bytes);
}
