// Every convolution backend on every ISA this CPU has, at 1 and 2 threads, against the
// reference loops: the packed engine (im2col fused into the GEMM's packing) and openblas.
#include <algorithm>
#include <array>

#include "conv/lowering.hpp"
#include "conv/pack/im2col_pack.hpp"
#include "conv/packed_conv.hpp"
#include "conv_cases.hpp"
#include "gemm/gemm.hpp"

namespace {

using convcases::Activation;
using convcases::Conv2dShape;
using im2gemm::detail::ConvOptions;
using im2gemm::detail::ConvPass;
using im2gemm::detail::GemmBackend;
using im2gemm::detail::Isa;
using std::int64_t;

using testutil::cpu_isas;

using convcases::kEveryThread;

// Wider shapes than random_shape: channel counts that leave partial MR tiles, K above the K
// block (kc = 256), several column blocks, images folded side by side.
Conv2dShape random_wide_shape(std::mt19937& rng) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Conv2dShape s;
  s.groups = pick(1, 3) == 1 ? 2 : 1;
  s.batch = pick(1, 3);
  s.in_channels = s.groups * pick(14, 40);
  s.out_channels = s.groups * pick(1, 21);
  s.kernel_height = pick(1, 3);
  s.kernel_width = pick(1, 3);
  s.stride_height = s.stride_width = pick(1, 4) == 1 ? 2 : 1;
  s.pad_height = pick(0, 2);
  s.pad_width = pick(0, 2);
  s.in_height = pick(3, 20);
  s.in_width = pick(3, 40);
  s.in_height = std::max<int64_t>(s.in_height, s.kernel_height);
  s.in_width = std::max<int64_t>(s.in_width, s.kernel_width);
  s.validate();
  return s;
}

// lenet_conv2: 8-pixel output rows, 64 images.
constexpr Conv2dShape kLenet2{.batch = 64,
                              .in_channels = 20,
                              .in_height = 12,
                              .in_width = 12,
                              .out_channels = 50,
                              .kernel_height = 5,
                              .kernel_width = 5};

}  // namespace

TEST_CASE("engines: random shapes on every backend and ISA, 1 and 2 threads, exact on integers") {
  std::mt19937 rng(20261202);
  constexpr int kShapes = 320, kWide = 40;
  int runs = 0, packed_fwd = 0, packed_bwd = 0, packed_w = 0, phases = 0, weight_phases = 0;
  int phase_isa_runs = 0;  // packed runs on an ISA with a column-phase packer
  int pixel_parts = 0;     // backward weights with one image's pixels split over the threads
  for (int i = 0; i < kShapes + kWide; ++i) {
    const Conv2dShape s = i < kShapes ? convcases::random_shape(rng) : random_wide_shape(rng);
    const Activation act = convcases::kActs[i % 4];
    const bool with_bias = i % 3 != 2;
    INFO("shape " << i << ": " << testutil::describe(s) << " act " << static_cast<int>(act));
    const auto di = convcases::make_data(s, static_cast<std::uint32_t>(i), true);
    const auto ri = convcases::run_ref(s, di, act, with_bias);
    const auto df = convcases::make_data(s, static_cast<std::uint32_t>(i) + 50000, false);
    const auto rf = convcases::run_ref(s, df, act, with_bias);
    for (GemmBackend be : {GemmBackend::packed, GemmBackend::openblas}) {
      // The ISA cap chooses the packed engine's kernels; the openblas path runs once (its
      // lowering loops are covered ISA by ISA in test_conv2d_fast).
      for (Isa isa : be == GemmBackend::packed ? cpu_isas() : std::vector<Isa>{Isa::avx512}) {
        for (int threads : {1, 2}) {
          const ConvOptions o{.backend = be,
                              .isa = isa,
                              .threads = threads,
                              .tuning = kEveryThread};
          INFO(im2gemm::detail::gemm_backend_name(be)
               << " " << im2gemm::detail::isa_name(isa) << " threads " << threads);
          convcases::compare(s, convcases::run_with(o, s, di, act, with_bias), ri, true);
          // Float data: tolerance, on one thread count per ISA (rounding differs by ISA).
          if (threads == 2)
            convcases::compare(s, convcases::run_with(o, s, df, act, with_bias), rf, false);
          ++runs;
          phase_isa_runs += be == GemmBackend::packed &&
                            im2gemm::detail::phase_packer(isa).pack != nullptr;
          phases += be == GemmBackend::packed &&
                    im2gemm::detail::plan_packed(im2gemm::detail::packed_forward_problem(s), isa,
                                                 threads, o.tuning)
                        .phases;
          weight_phases +=
              be == GemmBackend::packed &&
              im2gemm::detail::weights_fused_phases(
                  s, im2gemm::detail::plan_conv(s, ConvPass::backward_weights, threads, o.tuning),
                  isa);
          pixel_parts +=
              im2gemm::detail::plan_conv(s, ConvPass::backward_weights, threads, o.tuning)
                  .pixel_parts > 1;
          packed_fwd += im2gemm::detail::conv_backend(s, ConvPass::forward, o) ==
                        GemmBackend::packed;
          packed_bwd += im2gemm::detail::conv_backend(s, ConvPass::backward_data, o) ==
                        GemmBackend::packed;
          packed_w += im2gemm::detail::conv_backend(s, ConvPass::backward_weights, o) ==
                      GemmBackend::packed;
        }
      }
    }
  }
  MESSAGE((kShapes + kWide) << " shapes, " << runs << " runs; packed forward " << packed_fwd
                            << ", packed backward data " << packed_bwd
                            << ", packed backward weights " << packed_w
                            << "; packed forward from column phases " << phases
                            << ", backward weights " << weight_phases
                            << "; backward weights by pixel parts " << pixel_parts);
  // Strides 2..4 of unfolded plans, on the ISAs with a phase packer (every one since the
  // AVX-512 packer): about a fifth of their runs.
  CHECK(phases > phase_isa_runs / 6);
  CHECK(weight_phases > 0);  // on AVX2 and AVX-512; the shapes that fill the panels: next test
  CHECK(pixel_parts > 0);    // single images at 2 threads, on both backends
  CHECK(packed_fwd ==
        runs - runs / static_cast<int>(cpu_isas().size() + 1));  // every forward asked of it
  CHECK(packed_bwd > runs / 8);   // and backward data wherever the stride is 1
  CHECK(packed_w == packed_fwd);  // and every backward weights
}

TEST_CASE(
    "engines: the packed engine is bitwise repeatable and differs across threads only by rounding") {
  Conv2dShape s{.batch = 3,
                .in_channels = 37,
                .in_height = 19,
                .in_width = 23,
                .out_channels = 29,
                .kernel_height = 3,
                .kernel_width = 3,
                .pad_height = 1,
                .pad_width = 1};
  const auto d = convcases::make_data(s, 5, false);
  for (Isa isa : cpu_isas()) {
    const auto a = convcases::run_with({GemmBackend::packed, isa, 2}, s, d, Activation::tanh, true);
    const auto b = convcases::run_with({GemmBackend::packed, isa, 2}, s, d, Activation::tanh, true);
    const auto one =
        convcases::run_with({GemmBackend::packed, isa, 1}, s, d, Activation::tanh, true);
    CHECK(testutil::bitwise_equal(a.y, b.y));
    CHECK(testutil::bitwise_equal(a.dx, b.dx));
    convcases::compare(s, one, a, false);
  }
}

TEST_CASE(
    "engines: the packed plan keeps scratch <= 8 MiB, terminates at 1..1024 threads and balances 4..64 threads on the suite") {
  // Suite shapes, inline (the test needs no file).
  const int64_t L[][11] = {
      {1, 3, 5, 5, 2, 3, 3, 2, 2, 1, 1},       {64, 1, 28, 28, 20, 5, 5, 1, 1, 0, 0},
      {64, 20, 12, 12, 50, 5, 5, 1, 1, 0, 0},  {8, 3, 227, 227, 96, 11, 11, 4, 4, 0, 0},
      {1, 64, 224, 224, 64, 3, 3, 1, 1, 1, 1}, {8, 256, 56, 56, 256, 3, 3, 1, 1, 1, 1},
      {8, 3, 224, 224, 64, 7, 7, 2, 2, 3, 3},  {8, 64, 56, 56, 256, 1, 1, 1, 1, 0, 0},
      {8, 128, 56, 56, 128, 3, 3, 2, 2, 1, 1}, {8, 512, 7, 7, 512, 3, 3, 1, 1, 1, 1},
      {1, 512, 7, 7, 512, 3, 3, 1, 1, 1, 1},   {1, 256, 56, 56, 256, 3, 3, 1, 1, 1, 1}};
  for (const auto& l : L) {
    const Conv2dShape s{.batch = l[0],
                        .in_channels = l[1],
                        .in_height = l[2],
                        .in_width = l[3],
                        .out_channels = l[4],
                        .kernel_height = l[5],
                        .kernel_width = l[6],
                        .stride_height = l[7],
                        .stride_width = l[8],
                        .pad_height = l[9],
                        .pad_width = l[10]};
    INFO(testutil::describe(s));
    for (Isa isa : cpu_isas()) {
      for (const auto& pc : {im2gemm::detail::packed_forward_problem(s),
                             im2gemm::detail::packed_backward_data_problem(s)}) {
        for (int threads = 1; threads <= 1024; threads += threads < 72 ? 1 : 37) {
          const auto p = im2gemm::detail::plan_packed(pc, isa, threads);
          CHECK(p.scratch_bytes() <= (std::size_t{8} << 20));
          CHECK(p.threads <= threads);
          CHECK(p.items(pc) >= 1);
          // Every thread within 10% of the mean work (or fewer threads run).
          if (threads == 4 || threads == 8 || threads == 16 || threads == 32 || threads == 64) {
            INFO("threads " << threads << " planned " << p.threads << " imbalance "
                            << p.imbalance(pc));
            CHECK(p.imbalance(pc) <= 1.10);
          }
        }
      }
    }
  }
}

TEST_CASE("engines: backward weights packed from column phases, strides 2-4, exact on integers") {
  // Strided shapes whose taps (channels x KH x KW) leave at most 1/10 of the 16-lane vectors
  // that the tiles compute empty, where backward weights on the engine packs col^T from
  // column phases (weights_fused_phases): multiples of 16, and resnet_conv1's 147 taps on 160
  // lanes, 63 on 64, 75 on 80 (on AVX-512 the last of each 48-lane panel run one, two or three
  // vectors wide).
  std::mt19937 rng(4242);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const std::array<std::array<int, 3>, 8> taps{
      {{16, 1, 1}, {16, 3, 3}, {3, 4, 4}, {8, 2, 2}, {1, 4, 4}, {3, 7, 7}, {7, 3, 3}, {3, 5, 5}}};
  for (Isa isa : {Isa::avx2, Isa::avx512}) {
    if (std::find(cpu_isas().begin(), cpu_isas().end(), isa) == cpu_isas().end()) {
      MESSAGE(im2gemm::detail::isa_name(isa) << " not on this CPU (or capped): not run");
      continue;
    }
    CAPTURE(im2gemm::detail::isa_name(isa));
    int fused = 0;
    for (int i = 0; i < 48; ++i) {
      const auto& t = taps[static_cast<std::size_t>(i) % taps.size()];
      Conv2dShape s;
      s.batch = pick(1, 3);
      s.in_channels = t[0];
      s.kernel_height = t[1];
      s.kernel_width = t[2];
      s.out_channels = pick(1, 20);
      s.stride_height = pick(1, 3);
      s.stride_width = pick(2, 4);
      s.pad_height = pick(0, t[1] / 2);
      s.pad_width = pick(0, t[2] / 2);
      s.in_height = pick(t[1], 20);
      s.in_width = pick(t[2], 70);
      s.validate();
      INFO("shape " << i << ": " << testutil::describe(s));
      const auto di = convcases::make_data(s, static_cast<std::uint32_t>(i) + 900, true);
      const auto ri = convcases::run_ref(s, di, Activation::identity, true);
      for (int threads : {1, 2}) {
        const ConvOptions o{.backend = GemmBackend::packed,
                            .isa = isa,
                            .threads = threads,
                            .tuning = kEveryThread};
        const bool phases = im2gemm::detail::weights_fused_phases(
            s, im2gemm::detail::plan_conv(s, ConvPass::backward_weights, threads, o.tuning), isa);
        fused += phases;
        convcases::compare(s, convcases::run_with(o, s, di, Activation::identity, true), ri, true);
      }
    }
    // The rest: split images larger than the column block's room (1x1 kernels at stride 2-4).
    MESSAGE(fused << " of 96 runs packed backward weights from column phases");
    CHECK(fused > 40);
  }
}

TEST_CASE(
    "engines: auto gives forward to the packed engine by row length against the panel width") {
  // lenet_conv2 (8-pixel output rows) and a 1x1 stride-1 layer: packed on 16-lane panels
  // (AVX2), openblas on 48-lane ones (AVX-512); vgg_conv3_2: packed on both; scalar never.
  Conv2dShape lenet2 = kLenet2;
  Conv2dShape one{.batch = 8,
                  .in_channels = 64,
                  .in_height = 56,
                  .in_width = 56,
                  .out_channels = 256,
                  .kernel_height = 1,
                  .kernel_width = 1};
  Conv2dShape vgg{.batch = 8,
                  .in_channels = 256,
                  .in_height = 56,
                  .in_width = 56,
                  .out_channels = 256,
                  .kernel_height = 3,
                  .kernel_width = 3,
                  .pad_height = 1,
                  .pad_width = 1};
  for (Isa isa : cpu_isas()) {
    CAPTURE(static_cast<int>(isa));
    const ConvOptions o{GemmBackend::automatic, isa, 2};
    const auto fwd = [&](const Conv2dShape& s) {
      return im2gemm::detail::conv_backend(s, ConvPass::forward, o);
    };
    if (isa == Isa::scalar) {
      CHECK(fwd(vgg) == GemmBackend::openblas);
      continue;
    }
    const GemmBackend narrow = isa == Isa::avx2 ? GemmBackend::packed : GemmBackend::openblas;
    CHECK(fwd(lenet2) == narrow);
    CHECK(fwd(one) == narrow);
    CHECK(fwd(vgg) == GemmBackend::packed);
    // Strides 2..4: packed where the plan packs from column phases (every vector ISA;
    // openblas where it would pack with strided loads: folded images) and each input float
    // feeds F*KH*KW/(SH*SW) >= 256 multiply-adds; stride 5: openblas.
    const GemmBackend phases = im2gemm::detail::phase_packer(isa).pack != nullptr
                                   ? GemmBackend::packed
                                   : GemmBackend::openblas;
    const auto strided = [&](int64_t f, int64_t k, int64_t st) {
      Conv2dShape t = vgg;
      t.out_channels = f;
      t.kernel_height = t.kernel_width = k;
      t.stride_height = t.stride_width = st;
      t.pad_height = t.pad_width = k / 2;
      return t;
    };
    CHECK(fwd(strided(64, 7, 2)) == phases);  // resnet_conv1's kernel: 784
    // alexnet_conv1's kernel (726) over this 56x56 input: 14-pixel output rows, under a
    // third of AVX-512's 48 lanes.
    CHECK(fwd(strided(96, 11, 4)) == (isa == Isa::avx2 ? phases : GemmBackend::openblas));
    CHECK(fwd(strided(256, 3, 2)) == phases);                 // 576
    CHECK(fwd(strided(128, 3, 2)) == phases);                 // resnet_3x3s2's: 288
    CHECK(fwd(strided(256, 3, 3)) == phases);                 // 256
    CHECK(fwd(strided(224, 3, 3)) == GemmBackend::openblas);  // 224
    CHECK(fwd(strided(64, 3, 2)) == GemmBackend::openblas);   // 144
    CHECK(fwd(strided(256, 5, 5)) == GemmBackend::openblas);  // stride 5
    Conv2dShape folded = strided(64, 7, 2);  // 14x14 -> 7x7: 49-pixel images side by side
    folded.in_height = folded.in_width = 14;
    CHECK(fwd(folded) == GemmBackend::openblas);
    // Backward weights: packed wherever B is packed straight from x (stride 1, not 1x1 s1
    // p0), else for planes of >= 256 pixels only; on 48-lane panels only where the lane
    // dimension fills 7/8 of the 16-lane vectors the tiles compute (lenet_conv1's 25 taps on
    // 32: openblas; resnet_conv1's 64 filters on 64: packed).
    const auto bww = [&](const Conv2dShape& s) {
      return im2gemm::detail::conv_backend(s, ConvPass::backward_weights, o);
    };
    CHECK(im2gemm::detail::weights_fused_pack(lenet2, isa));
    CHECK_FALSE(im2gemm::detail::weights_fused_pack(one, isa));
    CHECK(bww(vgg) == GemmBackend::packed);
    CHECK(bww(lenet2) == GemmBackend::packed);
    Conv2dShape lenet1 = lenet2;
    lenet1.in_channels = 1;
    lenet1.in_height = lenet1.in_width = 28;
    lenet1.out_channels = 20;
    CHECK(im2gemm::detail::weights_fused_pack(lenet1, isa));
    CHECK(bww(lenet1) == narrow);
    Conv2dShape rgb7 = vgg;  // resnet_conv1's shape: 64 filters (dW^T), four vectors
    rgb7.in_channels = 3;
    rgb7.in_height = rgb7.in_width = 224;
    rgb7.out_channels = 64;
    rgb7.kernel_height = rgb7.kernel_width = 7;
    rgb7.stride_height = rgb7.stride_width = 2;
    rgb7.pad_height = rgb7.pad_width = 3;
    CHECK(bww(rgb7) == GemmBackend::packed);
    // Its 147 taps leave 13 of the 160 lanes the tiles compute empty (1/10 at most packs from
    // column phases); 3x3x3 taps leave 5 of 32.
    const auto weights_phases = [&](const Conv2dShape& s) {
      return im2gemm::detail::weights_fused_phases(
          s, im2gemm::detail::plan_conv(s, ConvPass::backward_weights, 2, {}), isa);
    };
    CHECK(weights_phases(rgb7));
    Conv2dShape rgb3 = rgb7;
    rgb3.kernel_height = rgb3.kernel_width = 3;
    rgb3.pad_height = rgb3.pad_width = 1;
    CHECK_FALSE(weights_phases(rgb3));
    Conv2dShape small_strided = lenet2;  // 4x4 output planes, stride 2: no fused pack
    small_strided.stride_height = small_strided.stride_width = 2;
    CHECK_FALSE(im2gemm::detail::weights_fused_pack(small_strided, isa));
    CHECK(bww(small_strided) == GemmBackend::openblas);
    // Backward data by col2im with the engine's GEMMs: lenet_conv2 (input plane 2.25x its
    // output's) on both panel widths; a 3-channel strided layer only on 48-lane panels; a
    // short GEMM K (2 filters x 3 x 3) on neither.
    const auto bwd = [&](const Conv2dShape& s) {
      return im2gemm::detail::conv_backend(s, ConvPass::backward_data, o);
    };
    CHECK(bwd(lenet2) == GemmBackend::packed);
    Conv2dShape rgb = vgg;
    rgb.in_channels = 3;
    rgb.stride_height = rgb.stride_width = 2;
    CHECK(bwd(rgb) == (isa == Isa::avx2 ? GemmBackend::openblas : GemmBackend::packed));
    Conv2dShape few_filters = rgb;
    few_filters.out_channels = 2;
    CHECK(bwd(few_filters) == GemmBackend::openblas);
  }
}

TEST_CASE("engines: on AVX-512, auto runs batched short-row forward passes on AVX2's panels") {
  using im2gemm::detail::forward_engine_options;
  Conv2dShape lenet2 = kLenet2;
  Conv2dShape l4_b1{.batch = 1,
                    .in_channels = 512,
                    .in_height = 7,
                    .in_width = 7,
                    .out_channels = 512,
                    .kernel_height = 3,
                    .kernel_width = 3,
                    .pad_height = 1,
                    .pad_width = 1};  // 7-pixel rows, one image
  Conv2dShape l4_b8 = l4_b1;
  l4_b8.batch = 8;
  Conv2dShape wide = l4_b8;  // 56-pixel rows: AVX-512's panels
  wide.in_height = wide.in_width = 56;
  Conv2dShape tiny = lenet2;  // 4-pixel rows: too short for 16 lanes as well
  tiny.in_height = tiny.in_width = 8;
  for (Isa isa : cpu_isas()) {
    CAPTURE(static_cast<int>(isa));
    const ConvOptions o{GemmBackend::automatic, isa, 2};
    const Isa narrow = isa == Isa::avx512 ? Isa::avx2 : isa;
    CHECK(forward_engine_options(lenet2, o).isa == narrow);
    CHECK(forward_engine_options(l4_b8, o).isa == narrow);
    CHECK(forward_engine_options(l4_b1, o).isa == isa);
    CHECK(forward_engine_options(wide, o).isa == isa);
    CHECK(forward_engine_options(tiny, o).isa == isa);
    const ConvOptions forced{GemmBackend::packed, isa, 2};
    CHECK(forward_engine_options(lenet2, forced).isa == isa);
    CHECK(forward_engine_options(lenet2, o).threads == 2);
  }
}

TEST_CASE(
    "engines: backward data on the packed engine takes col2im where the transposed "
    "convolution would inflate the work") {
  // The transposed convolution does H*W/(OH*OW) times the GEMM's work. A kernel nearly as
  // large as the plane (the fuzzer's 65x64 over 65x65: 2 output pixels, 4225 input ones),
  // lenet_conv2 (2.25) and strided shapes take col2im with the engine's GEMMs; 'same'
  // padding keeps the transposed convolution. Results equal the reference's (integers).
  Conv2dShape big_kernel{.batch = 1,
                         .in_channels = 1,
                         .in_height = 65,
                         .in_width = 65,
                         .out_channels = 1,
                         .kernel_height = 65,
                         .kernel_width = 64};
  Conv2dShape same{.batch = 2,
                   .in_channels = 32,
                   .in_height = 20,
                   .in_width = 20,
                   .out_channels = 32,
                   .kernel_height = 3,
                   .kernel_width = 3,
                   .pad_height = 1,
                   .pad_width = 1};
  Conv2dShape lenet2{.batch = 5,
                     .in_channels = 20,
                     .in_height = 12,
                     .in_width = 12,
                     .out_channels = 50,
                     .kernel_height = 5,
                     .kernel_width = 5};  // 144 / 64 = 2.25
  Conv2dShape strided = same;
  strided.stride_height = strided.stride_width = 2;
  CHECK_FALSE(im2gemm::detail::backward_data_transposed(big_kernel));
  CHECK_FALSE(im2gemm::detail::backward_data_transposed(lenet2));
  CHECK_FALSE(im2gemm::detail::backward_data_transposed(strided));
  CHECK(im2gemm::detail::backward_data_transposed(same));
  for (Isa isa : cpu_isas()) {
    for (int threads : {1, 2}) {
      CAPTURE(static_cast<int>(isa));
      CAPTURE(threads);
      const ConvOptions o{GemmBackend::packed, isa, threads};
      for (const Conv2dShape& s : {big_kernel, lenet2, strided, same}) {
        CHECK(im2gemm::detail::conv_backend(s, ConvPass::backward_data, o) == GemmBackend::packed);
        const std::vector<float> dy = testutil::random_ints(s.y_size(), 3);
        const std::vector<float> w = testutil::random_ints(s.w_size(), 4);
        const std::vector<float> x = testutil::random_ints(s.x_size(), 5);
        for (Activation act : {Activation::identity, Activation::relu}) {
          std::vector<float> dx(s.x_size(), -7.0f), want(s.x_size(), -9.0f);
          im2gemm::detail::conv2d_backward_data_with(o, s, dy, w, dx, act, x);
          im2gemm::reference::conv2d_backward_data(s, dy, w, want, act, x);
          CHECK(dx == want);
        }
      }
    }
  }
}

TEST_CASE(
    "engines: the transposed im2col pack of backward weights equals im2col + transposing "
    "pack, bitwise") {
  // pack_im2col_transposed_avx2 reads B = col^T straight from x. Its reference: each image's
  // column block by im2col_block, side by side, then gemm::pack_b_transposed. Random geometry
  // (padding: masked taps; dilation; rows of 1-20 pixels: chunks of fewer than 8), blocks of
  // pixels crossing images and of columns crossing channels, panels of 16 and 48 lanes.
  if (!__builtin_cpu_supports("avx2")) {
    MESSAGE("no AVX2 on this CPU: the transposed packer is never used");
    return;
  }
  std::mt19937 rng(77);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  int checked = 0, padded = 0, short_rows = 0, whole_rows = 0;
  for (int i = 0; i < 600; ++i) {
    Conv2dShape s;
    s.batch = pick(1, 3);
    s.in_channels = pick(1, 12);
    s.in_height = pick(1, 14);
    s.in_width = pick(1, 20);
    s.kernel_height = pick(1, 4);
    s.kernel_width = pick(1, 4);
    s.stride_height = pick(1, 2);
    s.dilation_height = pick(1, 2);
    s.dilation_width = pick(1, 2);
    s.pad_height = pick(0, 2);
    s.pad_width = pick(0, 2);
    if (i % 4 == 0) {  // rows of exactly 8 or 16 pixels, unpadded: whole rows packed in a run
      s.pad_width = 0;
      s.in_width = (s.kernel_width - 1) * s.dilation_width + 8 * pick(1, 2);
    }
    if ((s.kernel_height - 1) * s.dilation_height + 1 > s.in_height + 2 * s.pad_height ||
        (s.kernel_width - 1) * s.dilation_width + 1 > s.in_width + 2 * s.pad_width) {
      continue;
    }
    const im2gemm::detail::ConvGeom g(s);
    const int64_t P = g.OH * g.OW, rows = s.in_channels * g.KH * g.KW, cols = s.batch * P;
    const auto x = testutil::random_ints(static_cast<std::size_t>(s.x_size()), i);
    std::vector<float> col(static_cast<std::size_t>(rows * cols));
    for (int64_t n = 0; n < s.batch; ++n) {
      im2gemm::detail::im2col_block(g, x.data() + n * s.in_channels * g.H * g.W, s.in_channels, 0,
                                    P, col.data() + n * P, cols);
    }
    const int nr = i % 2 ? 16 : 48;
    const int64_t k0 = pick(0, static_cast<int>(cols - 1)), k1 = pick(k0 + 1, cols);
    const int64_t j0 = pick(0, static_cast<int>(rows - 1)), j1 = pick(j0 + 1, rows);
    const int64_t panels = (j1 - j0 + nr - 1) / nr, stride = (k1 - k0) * nr + 8;
    const im2gemm::detail::PackGeom pg{
        s.in_channels, g.H,  g.W,  g.KH, g.KW, g.SH, g.SW,
        g.PH,          g.PW, g.DH, g.DW, g.OH, g.OW, s.in_channels * g.H * g.W};
    // Both packs 64-byte aligned (the packer's stores are aligned), sentinels between panels.
    const auto n = static_cast<std::size_t>(panels * stride);
    std::vector<float> want_buf(n + 16, -5.0f), got_buf = want_buf;
    auto aligned = [](std::vector<float>& v) {
      const auto a = reinterpret_cast<std::uintptr_t>(v.data());
      return v.data() + ((64 - a % 64) % 64) / sizeof(float);
    };
    float* want = aligned(want_buf);
    float* got = aligned(got_buf);
    im2gemm::detail::gemm::pack_b_transposed(col.data(), cols, k0, k1, j0, j1, nr, want, stride);
    im2gemm::detail::pack_im2col_transposed_avx2(pg, x.data(), k0, k1, j0, j1, nr, got, stride);
    INFO(testutil::describe(s) << " k [" << k0 << ", " << k1 << ") j [" << j0 << ", " << j1
                               << ") nr " << nr);
    REQUIRE(std::memcmp(got, want, n * sizeof(float)) == 0);
    ++checked;
    padded += s.pad_width > 0;
    short_rows += g.OW < 8;
    whole_rows += g.OW % 8 == 0 && s.pad_width == 0 && k1 - k0 >= 2 * g.OW;
  }
  MESSAGE(checked << " blocks, " << padded << " with horizontal padding, " << short_rows
                  << " with rows under 8 pixels, " << whole_rows
                  << " unpadded with rows of 8 or 16 pixels and two rows or more");
  CHECK(checked > 300);
  CHECK(padded > 100);
  CHECK(short_rows > 100);
  CHECK(whole_rows > 40);
}
