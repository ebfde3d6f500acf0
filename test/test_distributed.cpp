// im2gemm_mpi, run under mpirun with 2 ranks (test/meson.build): the allreduced gradient
// against the single-process gradient of the whole minibatch, parameters bitwise identical
// on every rank over several steps (uneven batches, a rank with no example), broadcast,
// the parameter check, and the sharding schedule.
//
// Every rank runs every test case in the same order. Collectives sit outside REQUIRE, so a
// failed check on one rank never leaves the other waiting. Ranks other than 0 print only
// failures (doctest --minimal), so the summary is rank 0's unless another rank fails.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "im2gemm/distributed.hpp"
#include "test_util.hpp"

using namespace im2gemm;
namespace dist = im2gemm::mpi;

namespace {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

Sequential make_net() {
  Sequential net(Shape3{1, 8, 8});
  net.add_conv2d(4, 3, Activation::relu);  // 6x6, fused with the pool
  net.add_maxpool2d(2);                    // 3x3
  net.add_dense(5, Activation::tanh);
  net.add_dense(3, Activation::identity);
  return net;
}

constexpr std::int64_t kPixels = 64;

struct Data {
  std::vector<float> x;
  std::vector<std::int32_t> y;
};

/// n samples, the same on every rank (seeded).
Data make_data(std::int64_t n, std::uint32_t seed) {
  Data d{testutil::random_floats(static_cast<std::size_t>(n * kPixels), seed), {}};
  for (std::int64_t i = 0; i < n; ++i) d.y.push_back(static_cast<std::int32_t>((i * 7 + seed) % 3));
  return d;
}

/// The samples of positions [first, first + count) that this rank takes: p % ranks == rank.
Data local_part(const Data& all, std::int64_t first, std::int64_t count, int rank, int ranks) {
  Data d;
  for (std::int64_t p = first; p < first + count; ++p) {
    if (p % ranks != rank) continue;
    d.x.insert(d.x.end(), all.x.begin() + p * kPixels, all.x.begin() + (p + 1) * kPixels);
    d.y.push_back(all.y[static_cast<std::size_t>(p)]);
  }
  return d;
}

/// True on every rank when every rank's v is bitwise rank 0's (an allgather of the whole buffer).
bool same_on_all_ranks(std::span<const float> v) {
  const int n = world_size();
  std::vector<float> all(v.size() * static_cast<std::size_t>(n));
  MPI_Allgather(v.data(), static_cast<int>(v.size()), MPI_FLOAT, all.data(),
                static_cast<int>(v.size()), MPI_FLOAT, MPI_COMM_WORLD);
  const std::span<const float> first = std::span<const float>(all).first(v.size());
  for (int r = 1; r < n; ++r) {
    if (!testutil::bitwise_equal(std::span<const float>(all).subspan(r * v.size(), v.size()),
                                 first))
      return false;
  }
  return true;
}

/// Largest |got - want| / max(|want|, floor) over the buffers.
double worst_error(std::span<const float> got, std::span<const float> want, double floor) {
  double worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(double(got[i]) - want[i]) /
                     std::max(std::fabs(double(want[i])), floor);
    worst = std::max(worst, std::isnan(d) ? 1e30 : d);
  }
  return worst;
}

double max_abs(std::span<const float> v) {
  double m = 0;
  for (float f : v) m = std::max(m, double(std::fabs(f)));
  return m;
}

// Summation order differs from one process (each rank sums its own examples, then the ranks
// are added): fp32 rounding, a few ulps of the largest gradient. Observed worst: 9.5e-8
// relative to the largest gradient (2.1e-8 on the parameters after 6 steps). A real mistake
// (a rank counted twice or not at all, the wrong scale) is an error of 0.1 and more.
constexpr double kGradTol = 1e-5;

}  // namespace

TEST_CASE("sharding: every example exactly once, global batches split evenly, uneven sizes") {
  struct Case {
    std::int64_t count, batch;
    int ranks;
  };
  for (const Case c : {Case{60000, 64, 2}, Case{60000, 64, 3}, Case{17, 8, 2}, Case{5, 8, 8},
                       Case{41, 8, 4}, Case{0, 4, 2}, Case{7, 1, 3}}) {
    CAPTURE(c.count);
    CAPTURE(c.batch);
    CAPTURE(c.ranks);
    std::int64_t covered = 0;
    for (int r = 0; r < c.ranks; ++r) {
      const auto s = dist::shard(c.count, r, c.ranks);
      CHECK(s.begin == covered);  // contiguous blocks, in rank order
      covered = s.end;
      CHECK(s.size() >= c.count / c.ranks);
      CHECK(s.size() <= c.count / c.ranks + 1);
    }
    CHECK(covered == c.count);
    const std::int64_t n = dist::steps(c.count, c.batch);
    CHECK(n == (c.count + c.batch - 1) / c.batch);
    std::vector<std::int64_t> next(static_cast<std::size_t>(c.ranks),
                                   0);  // each rank's next local position
    std::int64_t total = 0;
    for (std::int64_t s = 0; s < n; ++s) {
      std::int64_t sum = 0, lo = c.batch, hi = 0;
      for (int r = 0; r < c.ranks; ++r) {
        const auto slice = dist::step_slice(c.count, c.batch, s, r, c.ranks);
        CHECK(slice.begin == next[r]);  // consecutive, no gap, no overlap
        next[r] = slice.end;
        sum += slice.size();
        lo = std::min(lo, slice.size());
        hi = std::max(hi, slice.size());
      }
      CHECK(sum == dist::step_batch(c.count, c.batch, s));
      CHECK(hi - lo <= 1);
      total += sum;
    }
    CHECK(total == c.count);
    for (int r = 0; r < c.ranks; ++r) CHECK(next[r] == dist::shard(c.count, r, c.ranks).size());
  }
  CHECK_THROWS_AS(dist::shard(10, 2, 2), std::invalid_argument);
  CHECK_THROWS_AS(dist::steps(10, 0), std::invalid_argument);
  CHECK_THROWS_AS(dist::step_slice(10, 4, 3, 0, 2), std::invalid_argument);
}

TEST_CASE("allreduce_gradients: the single-process gradient of the whole minibatch") {
  const int rank = world_rank(), ranks = world_size();
  REQUIRE(ranks >= 2);
  // 9 examples: 5 on rank 0, 4 on rank 1; then 1 example: rank 1 has none, and its stale
  // gradient buffer (NaN) must count as zero.
  for (const std::int64_t batch : {std::int64_t{9}, std::int64_t{1}}) {
    CAPTURE(batch);
    const Data all = make_data(batch, 3);
    Sequential single = make_net();
    single.init(5);
    SoftmaxCrossEntropy loss;
    loss.forward(single.forward(all.x, batch), all.y, 3);
    single.backward(loss.backward());
    const std::vector<float> want(single.parameter_gradients().begin(),
                                  single.parameter_gradients().end());

    Sequential net = make_net();
    net.init(5);
    dist::DataParallel dp(net);
    const Data mine = local_part(all, 0, batch, rank, ranks);
    const auto m = static_cast<std::int64_t>(mine.y.size());
    auto grads = net.parameter_gradients();
    std::fill(grads.begin(), grads.end(), std::numeric_limits<float>::quiet_NaN());
    if (m > 0) {
      loss.forward(net.forward(mine.x, m), mine.y, 3);
      net.backward(loss.backward());
    }
    CHECK(dp.allreduce_gradients(m) == batch);
    const double err = worst_error(grads, want, max_abs(want));
    INFO("worst error relative to the largest gradient: " << err);
    CHECK(max_abs(want) > 1e-3);
    CHECK(err < kGradTol);
    CHECK(same_on_all_ranks(grads));
    CHECK(dp.stats().bytes >= static_cast<std::int64_t>(grads.size() * sizeof(float)));
  }
}

TEST_CASE(
    "train_step: one step gives the single-process gradient and update, with and without overlap") {
  const int rank = world_rank(), ranks = world_size();
  const std::int64_t batch = 9;
  const Data all = make_data(batch, 8);
  const Sgd sgd{0.1f, 0.9f, 1e-3f};
  Sequential single = make_net();
  single.init(2);
  SoftmaxCrossEntropy loss;
  single.train_step(all.x, all.y, batch, loss, sgd);
  const std::vector<float> want_g(single.parameter_gradients().begin(),
                                  single.parameter_gradients().end());
  const std::vector<float> want_w(single.parameter_values().begin(),
                                  single.parameter_values().end());

  for (const bool overlap : {false, true}) {
    CAPTURE(overlap);
    Sequential net = make_net();
    net.init(2);
    // Small buckets: every layer with parameters is a bucket of its own.
    dist::DataParallel dp(net, MPI_COMM_WORLD, dist::DataParallel::Options{overlap, 1});
    const Data mine = local_part(all, 0, batch, rank, ranks);
    dp.train_step(mine.x, mine.y, static_cast<std::int64_t>(mine.y.size()), batch, loss, sgd);
    const double gerr = worst_error(net.parameter_gradients(), want_g, max_abs(want_g));
    const double werr = worst_error(net.parameter_values(), want_w, max_abs(want_w));
    INFO("gradient error " << gerr << ", parameter error " << werr);
    CHECK(gerr < kGradTol);
    CHECK(werr < kGradTol);
    const auto check = dp.check_parameters();
    CHECK(check.identical);
    CHECK(check.summary() == "parameters identical on all ranks");
    CHECK(same_on_all_ranks(net.parameter_values()));
    CHECK(dp.stats().collectives >= (overlap ? 3 : 1));
  }
}

TEST_CASE(
    "train_step: parameters bitwise identical on every rank over several steps, uneven batches") {
  const int rank = world_rank(), ranks = world_size();
  // 17 examples, global batch 8: steps of 8, 8 and 1 (rank 1 has no example in the last).
  const std::int64_t count = 17, batch = 8;
  const Data all = make_data(count, 4);
  const Sgd sgd{0.05f, 0.9f, 0.0f};
  Sequential net = make_net(), single = make_net();
  net.init(7);
  single.init(7);
  dist::DataParallel dp(net);
  SoftmaxCrossEntropy loss, single_loss;
  int steps_done = 0;
  for (int epoch = 0; epoch < 2; ++epoch) {
    for (std::int64_t s = 0; s < dist::steps(count, batch); ++s) {
      const std::int64_t m = dist::step_batch(count, batch, s);
      const Data mine = local_part(all, s * batch, m, rank, ranks);
      const auto slice = dist::step_slice(count, batch, s, rank, ranks);
      CHECK(slice.size() == static_cast<std::int64_t>(mine.y.size()));
      dp.train_step(mine.x, mine.y, slice.size(), m, loss, sgd);
      single.train_step(std::span<const float>(all.x).subspan(s * batch * kPixels, m * kPixels),
                        std::span<const std::int32_t>(all.y).subspan(s * batch, m), m, single_loss,
                        sgd);
      ++steps_done;
      CAPTURE(steps_done);
      CHECK(dp.check_parameters().identical);
      CHECK(same_on_all_ranks(net.parameter_values()));
    }
  }
  CHECK(steps_done == 6);
  // And still the single-process trajectory, up to rounding grown over six steps.
  const double err = worst_error(net.parameter_values(), single.parameter_values(),
                                 max_abs(single.parameter_values()));
  INFO("parameter error after 6 steps: " << err);
  CHECK(err < kGradTol);
}

TEST_CASE(
    "broadcast_parameters makes differently initialised ranks equal; the check sees one ulp") {
  const int rank = world_rank(), ranks = world_size();
  Sequential net = make_net(), root = make_net();
  net.init(100 + static_cast<std::uint64_t>(rank));
  root.init(100);
  dist::DataParallel dp(net);
  const auto before = dp.check_parameters();
  CHECK(!before.identical);
  CHECK(before.checksums.size() == static_cast<std::size_t>(ranks));
  CHECK(before.summary().find("parameters differ: rank 0 ") == 0);
  CHECK(!same_on_all_ranks(net.parameter_values()));
  dp.broadcast_parameters(0);
  CHECK(testutil::bitwise_equal(net.parameter_values(), root.parameter_values()));
  CHECK(dp.check_parameters().identical);
  CHECK(same_on_all_ranks(net.parameter_values()));

  // One ulp on the last rank's last parameter: every rank sees the difference.
  auto v = net.parameter_values();
  const float kept = v.back();
  if (rank == ranks - 1) v.back() = std::nextafter(kept, 1e30f);
  const auto nudged = dp.check_parameters();
  CHECK(!nudged.identical);
  CHECK(nudged.checksums[0] != nudged.checksums[static_cast<std::size_t>(ranks - 1)]);
  v.back() = kept;
  CHECK(dp.check_parameters().identical);
  CHECK(dist::checksum(net.parameter_values()) == dist::checksum(root.parameter_values()));
}

TEST_CASE("bad arguments throw on every rank before any communication") {
  Sequential net = make_net();
  net.init(1);
  dist::DataParallel dp(net);
  CHECK_THROWS_AS(dp.allreduce_gradients(-1), std::invalid_argument);
  SoftmaxCrossEntropy loss;
  std::vector<float> x(2 * kPixels);
  std::vector<std::int32_t> y{0, 1};
  CHECK_THROWS_AS(dp.train_step(x, y, 2, 1, loss, Sgd{}), std::invalid_argument);  // local > global
  CHECK_THROWS_AS(dp.train_step(x, y, 1, 4, loss, Sgd{}), std::invalid_argument);  // 2 labels for 1
  CHECK_THROWS_AS(dp.broadcast_parameters(world_size()), std::invalid_argument);
  CHECK_THROWS_AS(dist::DataParallel(net, MPI_COMM_WORLD, dist::DataParallel::Options{true, 0}),
                  std::invalid_argument);
  // The trainer still works after the throws: the ranks are still in step.
  CHECK(dp.check_parameters().identical);
}

int main(int argc, char** argv) {
  dist::Environment env(argc, argv);
  doctest::Context context(argc, argv);
  if (env.rank() != 0) context.setOption("minimal", true);
  const int failed = context.run();
  // A rank with a failure reports it through its exit code: mpirun then exits non-zero.
  return failed;
}
