// The fast convolution (im2col / col2im + sgemm + OpenMP) against the reference loops.
#include <cblas.h>
#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>

#include "common/isa.hpp"
#include "common/scratch.hpp"
#include "conv/depthwise.hpp"
#include "conv/lowering.hpp"
#include "conv/packed_conv.hpp"
#include "conv/plan.hpp"
#include "conv_cases.hpp"
#include "test_util.hpp"

namespace {

using im2gemm::Activation;
using im2gemm::Conv2dShape;
using im2gemm::detail::ConvPass;
using std::int64_t;
using convcases::Data;
using convcases::Outputs;
using convcases::compare;
using convcases::kActs;
using convcases::make_data;
using convcases::random_shape;
using convcases::run_ref;

// This suite holds the openblas backend (im2col / col2im + sgemm, planned by plan_conv) to
// the reference; test_conv2d_engines runs the packed engine on every ISA.
// The openblas backend at `threads`, with column blocks of about `block_bytes` (0: the plan's
// own) and, for chunk_rows > 0, the forward K of every shape in chunks of about that many rows.
// Small shapes run on every requested thread too (the plan would otherwise give tiny problems
// one thread). The im2col / col2im kernels of `lowering` (scalar: the portable loops); by
// default the process's ISA (IM2GEMM_ISA: the meson test conv_fast_isa_avx2 runs this file
// under AVX2).
im2gemm::detail::ConvOptions tuned(int threads, std::size_t block_bytes = 0,
                                   std::int64_t chunk_rows = 0,
                                   im2gemm::detail::Isa lowering = im2gemm::detail::isa_active()) {
  im2gemm::detail::ConvOptions o{im2gemm::detail::GemmBackend::openblas, lowering, threads};
  o.tuning = convcases::kEveryThread;
  o.tuning.block_target_bytes = block_bytes;
  o.tuning.k_chunk_rows = chunk_rows;
  return o;
}

Outputs run_fast(const im2gemm::detail::ConvOptions& o, const Conv2dShape& s, const Data& d,
                 Activation act, bool with_bias) {
  return convcases::run_with(o, s, d, act, with_bias);
}

// The plan's own blocking at num_threads(), the process's ISA.
Outputs run_fast(const Conv2dShape& s, const Data& d, Activation act, bool with_bias) {
  return run_fast({im2gemm::detail::GemmBackend::openblas, im2gemm::detail::isa_active(),
                   im2gemm::num_threads()},
                  s, d, act, with_bias);
}

// Restores the thread count at scope exit.
struct Settings {
  Settings() = default;
  Settings(const Settings&) = delete;
  Settings& operator=(const Settings&) = delete;
  ~Settings() { im2gemm::set_num_threads(0); }
};

// The suite's layers (../shared/suite/layers.txt), embedded so that the test needs no file.
struct SuiteLayer {
  const char* name;
  int64_t n, c, h, w, f, kh, kw, sh, sw, ph, pw;
};
constexpr SuiteLayer kSuite[] = {
    {"tutorial", 1, 3, 5, 5, 2, 3, 3, 2, 2, 1, 1},
    {"lenet_conv1", 64, 1, 28, 28, 20, 5, 5, 1, 1, 0, 0},
    {"lenet_conv2", 64, 20, 12, 12, 50, 5, 5, 1, 1, 0, 0},
    {"alexnet_conv1", 8, 3, 227, 227, 96, 11, 11, 4, 4, 0, 0},
    {"vgg_conv1_2", 1, 64, 224, 224, 64, 3, 3, 1, 1, 1, 1},
    {"vgg_conv3_2", 8, 256, 56, 56, 256, 3, 3, 1, 1, 1, 1},
    {"resnet_conv1", 8, 3, 224, 224, 64, 7, 7, 2, 2, 3, 3},
    {"resnet_1x1", 8, 64, 56, 56, 256, 1, 1, 1, 1, 0, 0},
    {"resnet_3x3s2", 8, 128, 56, 56, 128, 3, 3, 2, 2, 1, 1},
    {"resnet_l4_b8", 8, 512, 7, 7, 512, 3, 3, 1, 1, 1, 1},
    {"resnet_l4_b1", 1, 512, 7, 7, 512, 3, 3, 1, 1, 1, 1},
    {"vgg_conv3_b1", 1, 256, 56, 56, 256, 3, 3, 1, 1, 1, 1},
};

Conv2dShape to_shape(const SuiteLayer& l) {
  Conv2dShape s;
  s.batch = l.n;
  s.in_channels = l.c;
  s.in_height = l.h;
  s.in_width = l.w;
  s.out_channels = l.f;
  s.kernel_height = l.kh;
  s.kernel_width = l.kw;
  s.stride_height = l.sh;
  s.stride_width = l.sw;
  s.pad_height = l.ph;
  s.pad_width = l.pw;
  return s;
}

// Also the layers of the suite file, when IM2GEMM_SUITE_DIR points at it.
std::vector<std::pair<std::string, Conv2dShape>> suite_shapes() {
  std::vector<std::pair<std::string, Conv2dShape>> out;
  for (const auto& l : kSuite) out.emplace_back(l.name, to_shape(l));
  if (const char* dir = std::getenv("IM2GEMM_SUITE_DIR")) {
    std::ifstream in(std::string(dir) + "/layers.txt");
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      std::istringstream ss(line);
      SuiteLayer l{};
      std::string name;
      if (ss >> name >> l.n >> l.c >> l.h >> l.w >> l.f >> l.kh >> l.kw >> l.sh >> l.sw >> l.ph >>
          l.pw) {
        out.emplace_back(name, to_shape(l));
      }
    }
  }
  return out;
}

}  // namespace

namespace {

// A random plane for the lowering tests (height h, width w given): kernels up to 5x5, strides
// 1-3, dilations 1-2, pads 0-3, 1-3 channels; false when the dilated kernel does not fit the
// padded plane.
template <class Pick>
bool random_lowering_shape(Pick& pick, int h, int w, Conv2dShape& s) {
  s.in_height = h;
  s.in_width = w;
  s.kernel_height = pick(1, 5);
  s.kernel_width = pick(1, 5);
  s.stride_height = pick(1, 3);
  s.stride_width = pick(1, 4);
  s.dilation_height = pick(1, 2);
  s.dilation_width = pick(1, 2);
  s.pad_height = pick(0, 3);
  s.pad_width = pick(0, 3);
  s.in_channels = pick(1, 3);
  return (s.kernel_height - 1) * s.dilation_height + 1 <= s.in_height + 2 * s.pad_height &&
         (s.kernel_width - 1) * s.dilation_width + 1 <= s.in_width + 2 * s.pad_width;
}

}  // namespace

TEST_CASE(
    "fast conv: random shapes, every pass, exact on integers and close on floats, 1 and 2 threads") {
  Settings restore;
  std::mt19937 rng(20261127);
  constexpr int kShapes = 320;
  int runs = 0;
  std::vector<im2gemm::detail::Isa> isas = testutil::cpu_isas();
  if (isas.size() > 1) isas.erase(isas.begin());  // scalar: the odd shapes
  for (int i = 0; i < kShapes; ++i) {
    const Conv2dShape s = random_shape(rng);
    const Activation act = kActs[i % 4];
    const bool with_bias = i % 3 != 2;
    // Odd shapes run the portable (target_clones) im2col/col2im, even ones the hand-written
    // kernels of each vector ISA of the CPU in turn.
    const auto lowering = i % 2 != 0 ? im2gemm::detail::Isa::scalar
                                     : isas[static_cast<std::size_t>(i / 2) % isas.size()];
    INFO("shape " << i << ": " << testutil::describe(s) << " act " << static_cast<int>(act)
                  << " lowering " << im2gemm::detail::isa_name(lowering));
    // Integer data: exact at 1 and 2 threads, with the default blocks and with tiny blocks
    // (many pixel blocks cutting output rows at odd places).
    const Data di = make_data(s, static_cast<std::uint32_t>(i), true);
    const Outputs ri = run_ref(s, di, act, with_bias);
    for (int threads : {1, 2}) {
      for (std::size_t block : {std::size_t{0}, std::size_t{1} << 11}) {
        // Tiny blocks also lower the forward K in chunks of about 8 rows.
        INFO("ints, threads " << threads << " block bytes " << block);
        compare(s, run_fast(tuned(threads, block, block ? 8 : 0, lowering), s, di, act, with_bias),
                ri, true);
        ++runs;
      }
    }
    // Float data: max(atol, rtol*|ref|).
    const Data df = make_data(s, static_cast<std::uint32_t>(i) + 100000, false);
    const Outputs rf = run_ref(s, df, act, with_bias);
    for (int threads : {1, 2}) {
      const auto o = tuned(threads, i % 2 ? std::size_t{1} << 12 : 0, i % 2 ? 8 : 0, lowering);
      INFO("floats, threads " << threads);
      compare(s, run_fast(o, s, df, act, with_bias), rf, false);
      ++runs;
    }
  }
  MESSAGE(kShapes << " random shapes x 3 passes, " << runs << " runs of each pass");
}

TEST_CASE(
    "fast conv: the small-plane im2col and col2im equal the portable loops bitwise and write only their block") {
  Settings restore;
  if (im2gemm::detail::isa_supported() != im2gemm::detail::Isa::avx512) {
    MESSAGE("no AVX-512 on this CPU: the small-plane kernel is never taken");
    return;
  }
  std::mt19937 rng(64);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  int taken = 0, planes_33_to_64 = 0, adjoint_taken = 0;
  for (int i = 0; i < 3000; ++i) {
    Conv2dShape s;
    const int h = pick(1, 9);
    if (!random_lowering_shape(pick, h, pick(1, 64 / h), s)) continue;
    const im2gemm::detail::ConvGeom g(s, im2gemm::detail::Isa::avx512),
        portable(s, im2gemm::detail::Isa::scalar);
    const int64_t P = g.OH * g.OW;
    const int64_t q0 = pick(0, static_cast<int>(P - 1));
    const int64_t q1 = pick(static_cast<int>(q0 + 1), static_cast<int>(P));
    const int64_t ld = (q1 - q0) + pick(0, 5);
    const int64_t rows = s.in_channels * s.kernel_height * s.kernel_width;
    const auto x =
        testutil::random_ints(static_cast<std::size_t>(s.in_channels * s.in_height * s.in_width),
                              static_cast<std::uint32_t>(i));
    std::vector<float> want(static_cast<std::size_t>(rows * ld + 16), -99.0f), got = want;
    im2gemm::detail::im2col_block(portable, x.data(), s.in_channels, q0, q1, want.data(), ld);
    if (!im2gemm::detail::im2col_small_plane(g, q0, q1)) continue;
    ++taken;
    planes_33_to_64 += s.in_height * s.in_width > 32;
    im2gemm::detail::im2col_block(g, x.data(), s.in_channels, q0, q1, got.data(), ld);
    INFO(testutil::describe(s) << " pixels [" << q0 << ", " << q1 << ") ldcol " << ld);
    // Elements between rows and after the block keep the sentinel in both.
    REQUIRE(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0);
    // The adjoint adds the block into dx (integers: exact in any order); a sentinel follows
    // the planes.
    if (!im2gemm::detail::col2im_small_plane(g, q0, q1)) continue;
    ++adjoint_taken;
    const auto colv = testutil::random_ints(want.size(), static_cast<std::uint32_t>(i) + 7777);
    auto dx_want = testutil::random_ints(x.size() + 16, static_cast<std::uint32_t>(i) + 8888);
    auto dx_got = dx_want;
    auto col_a = colv, col_b = colv;  // col2im may use its column block as scratch
    im2gemm::detail::col2im_add_block(portable, col_a.data(), ld, s.in_channels, q0, q1,
                                      dx_want.data());
    im2gemm::detail::col2im_add_block(g, col_b.data(), ld, s.in_channels, q0, q1, dx_got.data());
    REQUIRE(std::memcmp(dx_got.data(), dx_want.data(), dx_got.size() * sizeof(float)) == 0);
  }
  MESSAGE(taken << " blocks through the small-plane kernel, " << planes_33_to_64
                << " of them with planes of 33-64 floats; " << adjoint_taken
                << " through its adjoint");
  CHECK(taken > 1000);
  CHECK(planes_33_to_64 > 200);
  CHECK(adjoint_taken > 1000);
  // Planes above 64 floats or tables above 256 entries keep the other kernels.
  Conv2dShape big;
  big.in_height = 8;
  big.in_width = 9;
  big.kernel_height = 3;
  big.kernel_width = 3;
  CHECK_FALSE(im2gemm::detail::im2col_small_plane(
      im2gemm::detail::ConvGeom(big, im2gemm::detail::Isa::avx512), 0, 1));
  big.in_width = 8;
  CHECK(im2gemm::detail::im2col_small_plane(im2gemm::detail::ConvGeom(big,
                                                                      im2gemm::detail::Isa::avx512),
                                            0, 36));
  // The kernels are the call's: the same block under an AVX2 or scalar lowering ISA is not.
  for (auto isa : {im2gemm::detail::Isa::avx2, im2gemm::detail::Isa::scalar}) {
    CHECK_FALSE(im2gemm::detail::im2col_small_plane(im2gemm::detail::ConvGeom(big, isa), 0, 36));
    CHECK_FALSE(im2gemm::detail::col2im_gathers(im2gemm::detail::ConvGeom(big, isa)));
  }
  CHECK(im2gemm::detail::col2im_gathers(
      im2gemm::detail::ConvGeom(big, im2gemm::detail::Isa::avx512)));
  big.pad_height = big.pad_width = 60;  // 126 x 126 output pixels: 9 taps x 993 chunks
  CHECK_FALSE(im2gemm::detail::im2col_small_plane(
      im2gemm::detail::ConvGeom(big, im2gemm::detail::Isa::avx512), 0, 126 * 126));
}

TEST_CASE(
    "fast conv: the vector im2col and col2im (AVX2 or AVX-512) equal the portable loops bitwise "
    "and write only their block") {
  Settings restore;
  if (im2gemm::detail::isa_supported() == im2gemm::detail::Isa::scalar) {
    MESSAGE("no AVX2 on this CPU: only the portable loops run");
    return;
  }
  std::mt19937 rng(2026);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  int blocks = 0, narrow = 0, strided = 0, stride3 = 0, stride4 = 0;
  // Each vector ISA of the CPU in turn (the lowering ISA is a per-call choice).
  std::vector<im2gemm::detail::Isa> vector_isas = testutil::cpu_isas();
  vector_isas.erase(vector_isas.begin());  // scalar
  for (int i = 0; i < 2000; ++i) {
    Conv2dShape s;
    if (!random_lowering_shape(pick, pick(1, 20), pick(1, 40), s)) continue;
    const auto isa = vector_isas[static_cast<std::size_t>(i) % vector_isas.size()];
    const im2gemm::detail::ConvGeom g(s, isa), portable(s, im2gemm::detail::Isa::scalar);
    const int64_t P = g.OH * g.OW;
    // Whole images half the time, else a block cutting rows at random places.
    const int64_t q0 = i % 2 ? 0 : pick(0, static_cast<int>(P - 1));
    const int64_t q1 = i % 2 ? P : pick(static_cast<int>(q0 + 1), static_cast<int>(P));
    const int64_t ld = (q1 - q0) + pick(0, 5);
    const int64_t rows = s.in_channels * s.kernel_height * s.kernel_width;
    // The planes sit exactly at the end of their buffer: a read past them is caught by ASan.
    const auto xv =
        testutil::random_ints(static_cast<std::size_t>(s.in_channels * s.in_height * s.in_width),
                              i);
    std::vector<float> want(static_cast<std::size_t>(rows * ld + 16), -99.0f), got = want;
    im2gemm::detail::im2col_block(portable, xv.data(), s.in_channels, q0, q1, want.data(), ld);
    im2gemm::detail::im2col_block(g, xv.data(), s.in_channels, q0, q1, got.data(), ld);
    INFO(testutil::describe(s) << " pixels [" << q0 << ", " << q1 << ") ldcol " << ld << " "
                               << im2gemm::detail::isa_name(isa));
    REQUIRE(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0);
    const auto colv = testutil::random_ints(want.size(), static_cast<std::uint32_t>(i) + 5555);
    auto dx_want = testutil::random_ints(xv.size(), static_cast<std::uint32_t>(i) + 6666);
    auto dx_got = dx_want;
    auto col_a = colv, col_b = colv;  // col2im may use its column block as scratch
    im2gemm::detail::col2im_add_block(portable, col_a.data(), ld, s.in_channels, q0, q1,
                                      dx_want.data());
    im2gemm::detail::col2im_add_block(g, col_b.data(), ld, s.in_channels, q0, q1, dx_got.data());
    REQUIRE(std::memcmp(dx_got.data(), dx_want.data(), dx_got.size() * sizeof(float)) == 0);
    ++blocks;
    narrow += g.OW <= 8;
    strided += g.SW == 2;
    stride3 += g.SW == 3;
    stride4 += g.SW == 4;
  }
  MESSAGE(blocks << " blocks compared, " << narrow << " with rows of at most 8 pixels, " << strided
                 << " at horizontal stride 2, " << stride3 << " at 3, " << stride4 << " at 4");
  CHECK(blocks > 1000);
  CHECK(narrow > 200);
  CHECK(strided > 200);
  CHECK(stride3 > 200);  // AVX2: col2im by column phases at strides 2-4 (vector merge: 2, 4)
  CHECK(stride4 > 200);
}

TEST_CASE("fast conv: pixel blocks, image runs and channel splits on mid-size shapes") {
  Settings restore;
  // Shapes big enough for several pixel blocks with the default block size.
  std::vector<Conv2dShape> shapes;
  {
    Conv2dShape s;  // vgg-like, one image, 3x3 pad 1: pixel split at batch 1
    s.batch = 1;
    s.in_channels = 64;
    s.in_height = 50;
    s.in_width = 47;
    s.out_channels = 24;
    s.kernel_height = 3;
    s.kernel_width = 3;
    s.pad_height = 1;
    s.pad_width = 1;
    shapes.push_back(s);
    s.stride_height = 2;
    s.stride_width = 3;
    s.kernel_width = 5;
    s.pad_width = 2;  // rows cut oddly
    shapes.push_back(s);
    s = Conv2dShape{};  // small images side by side, odd batch
    s.batch = 5;
    s.in_channels = 20;
    s.in_height = 12;
    s.in_width = 12;
    s.out_channels = 50;
    s.kernel_height = 5;
    s.kernel_width = 5;
    shapes.push_back(s);
    s = Conv2dShape{};  // batch 1, tiny image, many channels: filter / channel split
    s.batch = 1;
    s.in_channels = 96;
    s.in_height = 7;
    s.in_width = 7;
    s.out_channels = 64;
    s.kernel_height = 3;
    s.kernel_width = 3;
    s.pad_height = 1;
    s.pad_width = 1;
    shapes.push_back(s);
    s.groups = 2;
    s.batch = 3;
    shapes.push_back(s);
    s = Conv2dShape{};  // alexnet-like: 11x11 stride 4, wide enough for several row chunks
    s.batch = 2;
    s.in_channels = 3;
    s.in_height = 47;
    s.in_width = 75;
    s.out_channels = 8;
    s.kernel_height = 11;
    s.kernel_width = 11;
    s.stride_height = 4;
    s.stride_width = 4;
    shapes.push_back(s);
    s = Conv2dShape{};  // resnet_conv1-like: 7x7 stride 2 pad 3
    s.batch = 1;
    s.in_channels = 3;
    s.in_height = 40;
    s.in_width = 70;
    s.out_channels = 8;
    s.kernel_height = 7;
    s.kernel_width = 7;
    s.stride_height = 2;
    s.stride_width = 2;
    s.pad_height = 3;
    s.pad_width = 3;
    shapes.push_back(s);
    s = Conv2dShape{};  // dilated, mixed strides, rows wider than 64 output columns
    s.batch = 2;
    s.in_channels = 4;
    s.in_height = 30;
    s.in_width = 140;
    s.out_channels = 5;
    s.kernel_height = 3;
    s.kernel_width = 5;
    s.stride_width = 2;
    s.dilation_height = 2;
    s.dilation_width = 3;
    s.pad_height = 1;
    s.pad_width = 2;
    shapes.push_back(s);
    s = Conv2dShape{};  // more than kMaxFiltersTransposedWeights filters: dW accumulated as is
    s.batch = 3;
    s.in_channels = 6;
    s.in_height = 9;
    s.in_width = 8;
    s.out_channels = 2 * 131;
    s.groups = 2;
    s.kernel_height = 3;
    s.kernel_width = 2;
    s.stride_width = 2;
    s.pad_height = 1;
    shapes.push_back(s);
    s.batch = 1;
    shapes.push_back(s);
  }
  CHECK_FALSE(
      im2gemm::detail::plan_conv(shapes.back(), ConvPass::backward_weights, 2).weights_transposed);
  CHECK(
      im2gemm::detail::plan_conv(shapes.front(), ConvPass::backward_weights, 2).weights_transposed);
  int n = 0;
  for (const auto& s : shapes) {
    for (Activation act : {Activation::identity, Activation::relu}) {
      const Data d = make_data(s, 777u + static_cast<std::uint32_t>(n), true);
      const Outputs want = run_ref(s, d, act, true);
      for (int threads : {1, 2, 3}) {
        for (std::size_t block : {std::size_t{0}, std::size_t{1} << 16}) {
          // Three threads with the portable loops.
          const auto lowering = threads != 3 ? im2gemm::detail::isa_active()
                                             : im2gemm::detail::Isa::scalar;
          INFO(testutil::describe(s) << " threads " << threads << " block " << block);
          compare(s, run_fast(tuned(threads, block, block ? 100 : 0, lowering), s, d, act, true),
                  want, true);
        }
      }
      ++n;
    }
  }
}

TEST_CASE(
    "fast conv: backward data gathers pixel blocks of whole output rows (strides 1, 2, 4), every activation") {
  Settings restore;
  // Fields in declaration order: N C H W F KH KW SH SW PH PW DH DW.
  const Conv2dShape shapes[] = {
      {2, 3, 40, 70, 8, 7, 7, 2, 2, 3, 3, 1, 1},     // resnet_conv1-like
      {2, 5, 23, 31, 6, 3, 3, 2, 2, 1, 1, 1, 1},     // odd sizes: a last phase column alone
      {2, 4, 21, 19, 3, 3, 2, 3, 2, 1, 0, 2, 1},     // vertical stride 3, dilated rows
      {2, 2, 17, 9, 3, 5, 5, 2, 2, 0, 0, 1, 1},      // rows no tap reaches past the last window
      {2, 2, 20, 33, 3, 5, 5, 1, 1, 2, 2, 1, 1},     // stride 1 (the AVX-512 gather)
      {2, 3, 47, 75, 4, 11, 11, 4, 4, 0, 0, 1, 1},   // alexnet_conv1-like, stride 4
      {2, 2, 30, 93, 3, 3, 5, 1, 4, 1, 2, 1, 2},     // stride 4 with dilated, padded taps
      {2, 2, 20, 171, 3, 11, 11, 4, 4, 2, 2, 1, 1},  // stride 4, rows with inner chunks
      // Width 11 at stride 4 with each padding phase (AVX2: one instance each).
      {2, 2, 25, 70, 3, 11, 11, 4, 4, 1, 1, 1, 1},
      {2, 2, 26, 77, 3, 11, 11, 4, 4, 3, 3, 1, 1},
  };
  int gathered = 0, n = 0;
  for (const auto& s : shapes) {
    const im2gemm::detail::ConvGeom geo(s);
    for (Activation act : kActs) {
      const Data d = make_data(s, 4242u + static_cast<std::uint32_t>(n++), true);
      const Outputs want = run_ref(s, d, act, true);
      for (int threads : {1, 2}) {
        // Column blocks of about 1.5 and 3.7 output rows, and the default.
        for (double block_rows : {0.0, 1.5, 3.7}) {
          const auto block = static_cast<std::size_t>(
              block_rows *
              static_cast<double>(s.in_channels * s.kernel_height * s.kernel_width * geo.OW * 4));
          const auto o = tuned(threads, block);
          const auto p = im2gemm::detail::plan_conv(s, ConvPass::backward_data, threads, o.tuning);
          INFO(testutil::describe(s)
               << " act " << static_cast<int>(act) << " threads " << threads << " block " << block
               << " pixel blocks " << p.pixel_blocks << " of " << p.block_pixels);
          if (p.pixel_blocks > 1 && s.stride_width <= 4 && p.block_pixels >= geo.OW) {
            CHECK(p.block_pixels % geo.OW == 0);
          }
          if (p.pixel_blocks > 1 && im2gemm::detail::col2im_gathers(geo)) ++gathered;
          compare(s, run_fast(o, s, d, act, true), want, true);
        }
      }
    }
  }
  // Every CPU with a vector lowering gathers the stride-2 shapes in several blocks.
  if (im2gemm::detail::isa_active() != im2gemm::detail::Isa::scalar) CHECK(gathered >= 64);
  MESSAGE(gathered << " multi-block runs gathered");
}

TEST_CASE("fast conv: bitwise repeatable at a fixed thread count, 1 vs 2 threads within rounding") {
  Settings restore;
  std::mt19937 rng(99);
  std::vector<Conv2dShape> shapes;
  for (int i = 0; i < 20; ++i) shapes.push_back(random_shape(rng));
  Conv2dShape mid;  // several pixel blocks and both weight-gradient modes
  mid.batch = 3;
  mid.in_channels = 32;
  mid.in_height = 40;
  mid.in_width = 37;
  mid.out_channels = 16;
  mid.kernel_height = 3;
  mid.kernel_width = 3;
  mid.pad_height = 1;
  mid.pad_width = 1;
  shapes.push_back(mid);
  for (const auto& s : shapes) {
    INFO(testutil::describe(s));
    const Data d = make_data(s, 4242u, false);
    for (std::size_t block : {std::size_t{0}, std::size_t{1} << 13}) {
      const auto two = tuned(2, block, block ? 40 : 0);
      const Outputs a = run_fast(two, s, d, Activation::tanh, true);
      const Outputs b = run_fast(two, s, d, Activation::tanh, true);
      CHECK(testutil::bitwise_equal(a.y, b.y));
      CHECK(testutil::bitwise_equal(a.dx, b.dx));
      CHECK(testutil::bitwise_equal(a.dw, b.dw));
      CHECK(testutil::bitwise_equal(a.db, b.db));
      const Outputs one = run_fast(tuned(1, block, block ? 40 : 0), s, d, Activation::tanh, true);
      compare(s, one, a, false);
    }
  }
}

TEST_CASE("fast conv: the plan balances 4..64 threads on the suite, or runs fewer") {
  int checked = 0;
  for (const auto& layer : suite_shapes()) {
    const auto& name = layer.first;  // no structured binding: clang 14 cannot capture one
    const auto& s = layer.second;
    for (ConvPass pass : {ConvPass::forward, ConvPass::backward_data, ConvPass::backward_weights}) {
      for (int threads : {4, 8, 16, 32, 64}) {
        const auto p = im2gemm::detail::plan_conv(s, pass, threads);
        INFO(name << " pass " << static_cast<int>(pass) << " threads " << threads << " planned "
                  << p.threads << " imbalance " << p.imbalance());
        CHECK(p.threads <= threads);
        CHECK(p.imbalance() <= 1.10);
        ++checked;
      }
    }
  }
  CHECK(checked >= 12 * 3 * 5);
}

TEST_CASE("fast conv: the planners read their tuning from the call, each field") {
  using im2gemm::detail::Isa;
  using im2gemm::detail::PlanTuning;
  // Small: one thread by the planners' own constants, one column block, the whole K at once.
  const Conv2dShape s{.batch = 1,
                      .in_channels = 4,
                      .in_height = 12,
                      .in_width = 12,
                      .out_channels = 4,
                      .kernel_height = 3,
                      .kernel_width = 3,
                      .pad_height = 1,
                      .pad_width = 1};
  Conv2dShape dw = s;  // depthwise: 4 groups of 8 channels
  dw.in_channels = dw.out_channels = dw.groups = 32;
  Conv2dShape wide = s;  // 64 panels of 16 pixels for the packed plan to split
  wide.in_channels = 2;
  wide.in_height = wide.in_width = 32;
  const PlanTuning own, every = convcases::kEveryThread;
  const PlanTuning small_blocks{.block_target_bytes = 4096}, chunks{.k_chunk_rows = 9};
  const auto pc = im2gemm::detail::packed_forward_problem(wide);
  for (ConvPass pass : {ConvPass::forward, ConvPass::backward_data, ConvPass::backward_weights}) {
    INFO("pass " << static_cast<int>(pass));
    CHECK(im2gemm::detail::plan_conv(s, pass, 2).threads == 1);
    CHECK(im2gemm::detail::plan_conv(s, pass, 2, own).threads == 1);
    CHECK(im2gemm::detail::plan_conv(s, pass, 2, every).threads == 2);
    CHECK(im2gemm::detail::plan_conv(s, pass, 1, small_blocks).pixel_blocks > 1);
    CHECK(im2gemm::detail::plan_conv(s, pass, 1).pixel_blocks == 1);
    const int p = static_cast<int>(pass);
    CHECK(im2gemm::detail::plan_depthwise(dw, p, 2, Isa::avx2).threads == 1);
    CHECK(im2gemm::detail::plan_depthwise(dw, p, 2, Isa::avx2, every).threads == 2);
  }
  CHECK(im2gemm::detail::plan_conv(s, ConvPass::forward, 1).k_chunks == 1);
  CHECK(im2gemm::detail::plan_conv(s, ConvPass::forward, 1, chunks).k_chunks == 4);
  CHECK(im2gemm::detail::plan_packed(pc, Isa::avx2, 2).threads == 1);
  CHECK(im2gemm::detail::plan_packed(pc, Isa::avx2, 2, every).threads == 2);
  // The packed plans of each thread are cached: the tuning is part of the key.
  CHECK(im2gemm::detail::plan_packed(pc, Isa::avx2, 2).threads == 1);
}

TEST_CASE(
    "fast conv: the plan keeps scratch <= 8 MiB per thread and uses every thread on the suite") {
  Settings restore;
  for (const auto& layer : suite_shapes()) {
    const auto& name = layer.first;  // no structured binding: clang 14 cannot capture one
    const auto& s = layer.second;
    for (int threads : {1, 2, 4, 8}) {
      INFO(name << " threads " << threads);
      const std::size_t bytes = im2gemm::conv2d_scratch_bytes(s, threads);
      CHECK(bytes <= im2gemm::detail::kMaxScratchBytesPerThread);
      for (ConvPass pass :
           {ConvPass::forward, ConvPass::backward_data, ConvPass::backward_weights}) {
        const auto p = im2gemm::detail::plan_conv(s, pass, threads);
        CHECK(p.scratch_bytes() <= bytes);
        if (name != "tutorial") {
          INFO("pass " << static_cast<int>(pass));
          CHECK(p.items() >= threads);  // batch 1 included: no idle thread
        }
        // A whole image's column matrix is never held when it is larger than the bound.
        const auto full = static_cast<std::size_t>(p.K * p.P) * sizeof(float);
        if (full > im2gemm::detail::kMaxScratchBytesPerThread) CHECK(p.col_floats < p.K * p.P);
      }
    }
  }
  // The forward K is lowered in chunks exactly where it is long (about 2 x kKChunkRows or
  // more) and images are not put side by side.
  for (const auto& l : kSuite) {
    const Conv2dShape s = to_shape(l);
    const auto p = im2gemm::detail::plan_conv(s, ConvPass::forward, 2);
    const std::string name = l.name;
    INFO(name << ": K " << p.K << " k_chunks " << p.k_chunks);
    const bool long_k = name == "vgg_conv3_2" || name == "vgg_conv3_b1" || name == "resnet_3x3s2";
    CHECK((p.k_chunks > 1) == long_k);
    if (long_k) CHECK(p.col_floats < p.K * p.block_pixels);
  }
  // Tiny problems run on one thread, real layers on every thread asked for.
  CHECK(im2gemm::detail::plan_conv(to_shape(kSuite[0]), ConvPass::forward, 2).threads == 1);
  CHECK(im2gemm::detail::plan_conv(to_shape(kSuite[10]), ConvPass::forward, 2).threads == 2);
  // vgg_conv1_2's whole column matrix would be 110 MiB.
  const Conv2dShape vgg = to_shape(kSuite[4]);
  CHECK(static_cast<std::size_t>(vgg.in_channels * 9 * 224 * 224) * 4 > (std::size_t{100} << 20));
  CHECK(im2gemm::conv2d_scratch_bytes(vgg, 2) <= (std::size_t{8} << 20));
  CHECK_THROWS_AS(im2gemm::conv2d_scratch_bytes(vgg, -1), std::invalid_argument);
  Conv2dShape bad = vgg;
  bad.groups = 3;
  CHECK_THROWS_AS(im2gemm::conv2d_scratch_bytes(bad, 1), std::invalid_argument);
}

namespace {

// Counts, over the items of plan p as thread_items deals them to p.threads threads, how often
// each unit of the pass's work is done: forward (image, group, pixel, filter), backward data
// (image, group, channel), backward weights (image, group, pixel, channel); every count must
// be 1.
// Also checks each image run: not empty, at most images_per_block images.
void check_items_cover(const im2gemm::detail::ConvPlan& p) {
  using im2gemm::detail::WorkItem;
  REQUIRE(p.image_runs >= 1);
  int64_t next = 0;
  for (int64_t r = 0; r < p.image_runs; ++r) {
    const auto run = p.image_run(r);
    REQUIRE(run.begin == next);
    REQUIRE(run.size() >= 1);
    REQUIRE(run.size() <= p.images_per_block);
    next = run.end;
  }
  REQUIRE(next == p.N);
  const bool fwd = p.pass == ConvPass::forward;
  const bool by_pixel = p.pass != ConvPass::backward_data;  // items own pixel ranges
  const int64_t lanes = fwd ? p.Fg : p.Cg, pixels = by_pixel ? p.P : 1;
  std::vector<int> count(static_cast<std::size_t>(p.N * p.groups * pixels * lanes), 0);
  int64_t dealt = 0;
  for (int64_t t = 0; t < p.threads; ++t) {
    const auto mine = p.thread_items(t, p.threads);
    REQUIRE(mine.begin == dealt);
    dealt = mine.end;
    for (int64_t it = mine.begin; it < mine.end; ++it) {
      const WorkItem w = p.item(it);
      REQUIRE(w.images.begin == p.image_run(w.runs.begin).begin);
      REQUIRE(w.images.end == p.image_run(w.runs.end - 1).end);
      const auto q = by_pixel ? w.pixels : im2gemm::detail::Part{0, 1};
      const auto l = fwd ? w.filters : w.channels;
      for (int64_t n = w.images.begin; n < w.images.end; ++n) {
        for (int64_t g = w.groups.begin; g < w.groups.end; ++g) {
          for (int64_t px = q.begin; px < q.end; ++px) {
            for (int64_t f = l.begin; f < l.end; ++f) {
              ++count[static_cast<std::size_t>(((n * p.groups + g) * pixels + px) * lanes + f)];
            }
          }
        }
      }
    }
  }
  REQUIRE(dealt == p.items());
  // Items of one columns_key share their column block: same runs, group and pixels.
  for (int64_t it = 1; it < p.items(); ++it) {
    const WorkItem a = p.item(it - 1), b = p.item(it);
    if (a.columns_key != b.columns_key) continue;
    REQUIRE(a.runs.begin == b.runs.begin);
    REQUIRE(a.groups.begin == b.groups.begin);
    REQUIRE(a.pixels.begin == b.pixels.begin);
    REQUIRE(a.pixels.end == b.pixels.end);
  }
  int64_t wrong = 0;
  for (int c : count) wrong += c != 1;
  CHECK(wrong == 0);
}

}  // namespace

TEST_CASE(
    "fast conv: work items cover each pass once, image runs fit their blocks and give every "
    "thread the same images") {
  Settings restore;
  int checked = 0, multi = 0;
  for (int64_t n = 1; n <= 70; ++n) {
    for (int threads = 1; threads <= 5; ++threads) {
      Conv2dShape s;  // lenet_conv2-like: 8x8 outputs, images side by side
      s.batch = n;
      s.in_channels = 20;
      s.in_height = 12;
      s.in_width = 12;
      s.out_channels = 50;
      s.kernel_height = 5;
      s.kernel_width = 5;
      for (ConvPass pass :
           {ConvPass::forward, ConvPass::backward_data, ConvPass::backward_weights}) {
        const auto p = im2gemm::detail::plan_conv(s, pass, threads);
        INFO("N " << n << " threads " << threads << " pass " << static_cast<int>(pass) << " runs "
                  << p.image_runs << " of <= " << p.images_per_block);
        check_items_cover(p);
        // Where image runs are the only item index (one group, pixel, filter and channel
        // block; backward weights' partial sums), thread t's items are runs [t*r, (t+1)*r):
        // equal image counts +-1.
        if (p.image_runs % p.threads == 0 && p.items() == p.image_runs) {
          int64_t lo = n, hi = 0;
          for (int64_t t = 0; t < p.threads; ++t) {
            int64_t imgs = 0;
            const auto mine = p.thread_items(t, p.threads);
            for (int64_t it = mine.begin; it < mine.end; ++it) imgs += p.item(it).images.size();
            lo = std::min(lo, imgs);
            hi = std::max(hi, imgs);
          }
          CHECK(hi - lo <= 1);
          multi += p.images_per_block > 1 && p.threads > 1;
        }
        ++checked;
      }
    }
  }
  // Pixel, filter and channel blocks, groups, images split over threads: every suite layer
  // and a grouped one at 1..8 threads (forward counts stay under 30 M cells).
  auto shapes = suite_shapes();
  Conv2dShape grouped = shapes[2].second;  // lenet_conv2 in 2 groups, batch 3
  grouped.batch = 3;
  grouped.groups = 2;
  shapes.emplace_back("lenet_conv2 g2", grouped);
  for (const auto& layer : shapes) {
    const auto& name = layer.first;  // no structured binding: clang 14 cannot capture one
    const auto& s = layer.second;
    for (int threads = 1; threads <= 8; ++threads) {
      for (ConvPass pass :
           {ConvPass::forward, ConvPass::backward_data, ConvPass::backward_weights}) {
        const auto p = im2gemm::detail::plan_conv(s, pass, threads);
        INFO(name << " threads " << threads << " pass " << static_cast<int>(pass));
        check_items_cover(p);
        ++checked;
      }
    }
  }
  MESSAGE(checked << " plans checked, " << multi
                  << " with several threads and runs of several images");
  CHECK(multi > 100);
}

TEST_CASE(
    "fast conv: the 1x1 path is taken exactly for 1x1 stride 1 pad 0 dilation 1, and is correct") {
  Settings restore;
  Conv2dShape base;
  base.batch = 2;
  base.in_channels = 6;
  base.in_height = 9;
  base.in_width = 11;
  base.out_channels = 5;
  CHECK(im2gemm::detail::is_conv1x1_s1_p0_d1(base));
  CHECK(im2gemm::detail::plan_conv(to_shape(kSuite[7]), ConvPass::forward, 2).skips_im2col());
  std::vector<Conv2dShape> others;
  auto with = [&](auto edit) {
    Conv2dShape s = base;
    edit(s);
    others.push_back(s);
  };
  with([](Conv2dShape& s) { s.stride_height = 2; });
  with([](Conv2dShape& s) { s.stride_width = 2; });
  with([](Conv2dShape& s) { s.pad_height = 1; });
  with([](Conv2dShape& s) { s.pad_width = 1; });
  with([](Conv2dShape& s) { s.dilation_height = 2; });
  with([](Conv2dShape& s) { s.kernel_width = 2; });
  with([](Conv2dShape& s) {
    s.kernel_height = 3;
    s.pad_height = 1;
  });
  for (const auto& s : others) {
    INFO(testutil::describe(s));
    CHECK_FALSE(im2gemm::detail::is_conv1x1_s1_p0_d1(s));
    for (ConvPass pass : {ConvPass::forward, ConvPass::backward_data, ConvPass::backward_weights}) {
      CHECK_FALSE(im2gemm::detail::plan_conv(s, pass, 2).skips_im2col());
    }
  }
  others.push_back(base);
  Conv2dShape grouped = base;  // pointwise with groups, batch 1 (channel / filter split)
  grouped.batch = 1;
  grouped.in_channels = 64;
  grouped.out_channels = 32;
  grouped.groups = 2;
  grouped.in_height = 40;
  grouped.in_width = 33;
  others.push_back(grouped);
  for (const auto& s : others) {
    for (Activation act : kActs) {
      const Data d = make_data(s, 5u, true);
      const Outputs want = run_ref(s, d, act, true);
      for (int threads : {1, 2}) {
        for (std::size_t block : {std::size_t{0}, std::size_t{1} << 10}) {
          INFO(testutil::describe(s) << " threads " << threads << " block " << block);
          compare(s, run_fast(tuned(threads, block), s, d, act, true), want, true);
        }
      }
    }
  }
}

TEST_CASE("fast conv: calls from several std::threads at once") {
  Settings restore;
  const auto two = tuned(2);
  std::mt19937 rng(7);
  struct Job {
    Conv2dShape s;
    Data d;
    Outputs want;
    Activation act;
  };
  std::vector<Job> jobs;
  for (int i = 0; i < 4; ++i) {
    Job j;
    j.s = random_shape(rng);
    if (i == 0) {  // one job with several pixel blocks
      j.s = Conv2dShape{};
      j.s.batch = 2;
      j.s.in_channels = 64;
      j.s.in_height = 48;
      j.s.in_width = 48;
      j.s.out_channels = 16;
      j.s.kernel_height = 3;
      j.s.kernel_width = 3;
      j.s.pad_height = 1;
      j.s.pad_width = 1;
    }
    j.act = kActs[i];
    j.d = make_data(j.s, 300u + static_cast<std::uint32_t>(i), true);
    j.want = run_ref(j.s, j.d, j.act, true);
    jobs.push_back(std::move(j));
  }
  std::vector<int> bad(jobs.size(), 0);
  std::vector<std::thread> pool;
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    pool.emplace_back([&, i] {
      const Job& j = jobs[i];
      for (int rep = 0; rep < 5; ++rep) {
        const Outputs o = run_fast(two, j.s, j.d, j.act, true);
        if (!testutil::bitwise_equal(o.y, j.want.y) || !testutil::bitwise_equal(o.dx, j.want.dx) ||
            !testutil::bitwise_equal(o.dw, j.want.dw) ||
            !testutil::bitwise_equal(o.db, j.want.db)) {
          ++bad[i];
        }
      }
    });
  }
  for (auto& t : pool) t.join();
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    INFO("job " << i << ": " << testutil::describe(jobs[i].s));
    CHECK(bad[i] == 0);
  }
}

TEST_CASE("fast conv: bad input throws and leaves outputs untouched") {
  Conv2dShape s;
  s.batch = 1;
  s.in_channels = 2;
  s.in_height = 5;
  s.in_width = 5;
  s.out_channels = 3;
  s.kernel_height = 3;
  s.kernel_width = 3;
  std::vector<float> x(static_cast<std::size_t>(s.x_size()), 1.0f),
      w(static_cast<std::size_t>(s.w_size()), 1.0f);
  std::vector<float> y(static_cast<std::size_t>(s.y_size()), testutil::kSentinel);
  std::vector<float> short_w(w.size() - 1, 1.0f);
  CHECK_THROWS_AS(im2gemm::conv2d_forward(s, x, short_w, {}, y), std::invalid_argument);
  for (float v : y) CHECK(v == testutil::kSentinel);
  std::vector<float> dx(x.size(), testutil::kSentinel);
  CHECK_THROWS_AS(im2gemm::conv2d_backward_data(s, y, w, dx, Activation::relu),
                  std::invalid_argument);
  for (float v : dx) CHECK(v == testutil::kSentinel);
  std::vector<float> dw(w.size(), testutil::kSentinel), db(2, testutil::kSentinel);
  CHECK_THROWS_AS(im2gemm::conv2d_backward_weights(s, x, y, dw, db), std::invalid_argument);
  for (float v : dw) CHECK(v == testutil::kSentinel);
}

namespace {
// Threads of this process (Linux: one entry per thread in /proc/self/task).
int process_threads() {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) {
    (void)e;
    ++n;
  }
  return n;
}
}  // namespace

// Run by meson as its own process (test conv_inline_single_thread, OMP_NUM_THREADS=2), where
// no thread exists yet: a one-thread plan that runs inline (no OpenMP region) must not let
// OpenBLAS start threads of its own. In the full suite, earlier tests have started (and may
// still be ending) OpenMP pools, so a thread count proves nothing there; only the results
// are checked.
TEST_CASE("fast conv: inline one-thread plans start no thread, in any pass") {
  Settings restore;
  const bool fresh = std::getenv("IM2GEMM_EXPECT_FRESH_PROCESS") != nullptr;
  const int before = process_threads();
  if (fresh) REQUIRE(before == 1);
  im2gemm::set_num_threads(2);
  // The suite's tutorial layer and the largest shape an inline plan may have.
  Conv2dShape big;
  big.batch = 1;
  big.in_channels = 4;
  big.in_height = 11;
  big.in_width = 11;
  big.out_channels = 16;
  big.kernel_height = 4;
  big.kernel_width = 4;  // 16*8*8*4*16 MACs
  REQUIRE(big.macs() == im2gemm::detail::kMaxMacsInline);
  for (const Conv2dShape& s : {to_shape(kSuite[0]), big}) {
    for (ConvPass pass : {ConvPass::forward, ConvPass::backward_data, ConvPass::backward_weights}) {
      REQUIRE(im2gemm::detail::plan_conv(s, pass, 2).run_inline);
    }
    const Data d = make_data(s, 7, true);
    compare(s, run_fast(s, d, Activation::relu, true), run_ref(s, d, Activation::relu, true), true);
  }
  if (fresh) {
    CHECK(process_threads() == before);
    // The check can fail: the same OpenBLAS sgemm, large and outside any region, starts its
    // OpenMP team (OMP_NUM_THREADS=2 in this test's environment lets it).
    const int n = 512;
    std::vector<float> a(n * n, 1.0f), b(n * n, 1.0f), c(n * n, 0.0f);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n,
                0.0f, c.data(), n);
    CHECK(process_threads() > before);
  }
}

TEST_CASE("fast conv: conv2d_fast_path is false exactly where a GEMM dimension exceeds int") {
  for (const auto& layer : suite_shapes()) {
    INFO(layer.first);
    CHECK(im2gemm::conv2d_fast_path(layer.second));
  }
  Conv2dShape s;  // (C/groups)*KH*KW = 2^20 * 2^11 = 2^31 > INT_MAX (only the query is called)
  s.in_channels = int64_t{1} << 20;
  s.in_height = 1;
  s.kernel_height = 1;
  s.in_width = s.kernel_width = int64_t{1} << 11;
  CHECK_FALSE(im2gemm::conv2d_fast_path(s));
  s.in_channels = (int64_t{1} << 20) - 1;  // 2^31 - 2^11: fits
  CHECK(im2gemm::conv2d_fast_path(s));
  s.groups = 2;  // 2^20 - 1 is odd: not divisible
  CHECK_THROWS_AS(im2gemm::conv2d_fast_path(s), std::invalid_argument);
}

TEST_CASE("fast conv: a failed scratch allocation throws std::bad_alloc and writes nothing") {
  Settings restore;
  struct Unfail {
    ~Unfail() { im2gemm::detail::set_fail_scratch_thread(-1); }
  } unfail;
  // vgg_conv3_2 cut to one small image (backward weights splits channels), lenet_conv2 with
  // 4 images (per-thread partial dW), and the tutorial layer (inline, one thread).
  std::vector<Conv2dShape> shapes = {to_shape(kSuite[5]), to_shape(kSuite[2]), to_shape(kSuite[0])};
  shapes[0].batch = 1;
  shapes[0].in_height = shapes[0].in_width = 20;
  shapes[1].batch = 4;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto untouched = [](const std::vector<float>& v) {
    return std::all_of(v.begin(), v.end(), [](float f) { return std::isnan(f); });
  };
  int failures_seen = 0;
  // OMP_DYNAMIC could give a region fewer threads than asked: not in this test.
  const int dynamic = omp_get_dynamic();
  omp_set_dynamic(0);
  for (const Conv2dShape& s : shapes) {
    const Data d = make_data(s, 11, true);
    for (int threads : {1, 2}) {
      im2gemm::set_num_threads(threads);
      for (int failing : {0, 1}) {
        for (ConvPass pass :
             {ConvPass::forward, ConvPass::backward_data, ConvPass::backward_weights}) {
          // The thread exists in this pass only if the plan and OpenMP run that many.
          const int team = std::min(im2gemm::detail::plan_conv(s, pass, threads).threads,
                                    omp_get_thread_limit());
          const bool fails = failing < team;
          INFO(testutil::describe(s) << " threads " << threads << " failing thread " << failing
                                     << " pass " << static_cast<int>(pass));
          im2gemm::detail::set_fail_scratch_thread(failing);
          std::vector<float> out(static_cast<std::size_t>(pass == ConvPass::forward ? s.y_size()
                                                          : pass == ConvPass::backward_data
                                                              ? s.x_size()
                                                              : s.w_size()),
                                 nan);
          std::vector<float> db(static_cast<std::size_t>(s.out_channels), nan);
          auto call = [&] {
            if (pass == ConvPass::forward) {
              im2gemm::conv2d_forward(s, d.x, d.w, d.bias, out, Activation::relu);
            } else if (pass == ConvPass::backward_data) {
              im2gemm::conv2d_backward_data(s, d.dy, d.w, out, Activation::relu, d.xact);
            } else {
              im2gemm::conv2d_backward_weights(s, d.x, d.dy, out, db);
            }
          };
          if (fails) {
            ++failures_seen;
            CHECK_THROWS_AS(call(), std::bad_alloc);
            CHECK(untouched(out));
            CHECK(untouched(db));
          } else {
            CHECK_NOTHROW(call());
            CHECK_FALSE(untouched(out));
          }
        }
      }
    }
  }
  omp_set_dynamic(dynamic);
  if (omp_get_thread_limit() >= 2) {
    CHECK(failures_seen >= 20);  // both threads of the two-thread plans, and the inline ones
  }
  // Without the failure the same calls run and match the reference.
  im2gemm::detail::set_fail_scratch_thread(-1);
  im2gemm::set_num_threads(2);
  const Data d = make_data(shapes[1], 11, true);
  compare(shapes[1], run_fast(shapes[1], d, Activation::relu, true),
          run_ref(shapes[1], d, Activation::relu, true), true);
}
