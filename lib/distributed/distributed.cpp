// im2gemm_mpi: data-parallel training over MPI (see include/im2gemm/distributed.hpp).
#include "im2gemm/distributed.hpp"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace im2gemm::mpi {

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void fail(const std::string& what) {
  throw std::invalid_argument("im2gemm::mpi: " + what);
}

/// Adds the wall time of its lifetime to a CommunicationStats.
class CommTimer {
 public:
  explicit CommTimer(CommunicationStats& s) : s_(s), t0_(Clock::now()) {}
  ~CommTimer() { s_.seconds += std::chrono::duration<double>(Clock::now() - t0_).count(); }

 private:
  CommunicationStats& s_;
  Clock::time_point t0_;
};

/// MPI counts are ints: a buffer longer than INT_MAX goes in pieces.
template <class F>
void in_int_chunks(std::int64_t n, F&& f) {
  for (std::int64_t at = 0; at < n; at += INT_MAX)
    f(at, static_cast<int>(std::min<std::int64_t>(INT_MAX, n - at)));
}

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw std::runtime_error(std::string("im2gemm::mpi: ") + call +
                           " failed: " + std::string(msg, static_cast<std::size_t>(len)));
}

void check_sharding(std::int64_t count, std::int64_t global_batch, int rank, int ranks) {
  if (count < 0) fail("count must be >= 0, got " + std::to_string(count));
  if (global_batch < 1) fail("global_batch must be >= 1, got " + std::to_string(global_batch));
  if (ranks < 1 || rank < 0 || rank >= ranks) {
    fail("rank " + std::to_string(rank) + " of " + std::to_string(ranks) + " ranks");
  }
}

/// Local positions k of rank with k * ranks + rank < p, i.e. ceil((p - rank) / ranks) for p > rank.
std::int64_t positions_below(std::int64_t p, int rank, int ranks) {
  return p <= rank ? 0 : (p - rank + ranks - 1) / ranks;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

Environment::Environment(int& argc, char**& argv) {
  int provided = 0;
  check_mpi(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks_);
}

Environment::~Environment() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void abort_job(const std::string& message, int code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) {
    std::fprintf(stderr, "im2gemm: %s\n", message.c_str());
    std::fflush(stderr);
    std::exit(code);
  }
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  std::fprintf(stderr, "im2gemm: rank %d of %d: %s\n", rank, ranks, message.c_str());
  std::fflush(stderr);
  std::fflush(stdout);
  MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);  // MPI_Abort does not return; this keeps [[noreturn]] honest
}

// ---------------------------------------------------------------------------------------------

Range shard(std::int64_t count, int rank, int ranks) {
  check_sharding(count, 1, rank, ranks);
  const std::int64_t base = count / ranks, extra = count % ranks;
  const std::int64_t begin = rank * base + std::min<std::int64_t>(rank, extra);
  return Range{begin, begin + base + (rank < extra ? 1 : 0)};
}

std::int64_t steps(std::int64_t count, std::int64_t global_batch) {
  check_sharding(count, global_batch, 0, 1);
  return (count + global_batch - 1) / global_batch;
}

std::int64_t step_batch(std::int64_t count, std::int64_t global_batch, std::int64_t step) {
  const std::int64_t n = steps(count, global_batch);
  if (step < 0 || step >= n) fail("step " + std::to_string(step) + " of " + std::to_string(n));
  return std::min(global_batch, count - step * global_batch);
}

Range step_slice(std::int64_t count, std::int64_t global_batch, std::int64_t step, int rank,
                 int ranks) {
  check_sharding(count, global_batch, rank, ranks);
  const std::int64_t m = step_batch(count, global_batch, step);
  const std::int64_t first = step * global_batch;
  return Range{positions_below(first, rank, ranks), positions_below(first + m, rank, ranks)};
}

// ---------------------------------------------------------------------------------------------

std::uint64_t checksum(std::span<const float> values) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (float v : values) {
    std::uint32_t bits;
    static_assert(sizeof bits == sizeof v);
    std::memcpy(&bits, &v, sizeof bits);
    for (int i = 0; i < 4; ++i) {
      h ^= (bits >> (8 * i)) & 0xffu;
      h *= 0x100000001b3ull;
    }
  }
  return h;
}

std::string ParameterCheck::summary() const {
  if (identical) return "parameters identical on all ranks";
  std::string s = "parameters differ:";
  char buf[64];
  for (std::size_t r = 0; r < checksums.size(); ++r) {
    std::snprintf(buf, sizeof buf, " rank %zu %016llx", r,
                  static_cast<unsigned long long>(checksums[r]));
    s += (r ? "," : "") + std::string(buf);
  }
  return s;
}

// ---------------------------------------------------------------------------------------------

DataParallel::DataParallel(Sequential& net, MPI_Comm comm, Options options)
    : net_(net), options_(options) {
  if (options.bucket_floats < 1)
    fail("bucket_floats must be >= 1, got " + std::to_string(options.bucket_floats));
  values_ = net.parameter_values();
  grads_ = net.parameter_gradients();
  // Buckets: whole layers, last first, each closed once it holds bucket_floats gradients.
  std::int64_t end = net.parameter_offset(net.size());
  for (std::size_t i = net.size(); i-- > 0;) {
    const std::int64_t begin = net.parameter_offset(i);
    if (end - begin >= options.bucket_floats || (i == 0 && end > begin)) {
      if (end - begin > INT_MAX) {
        fail("a bucket of " + std::to_string(end - begin) + " gradients exceeds MPI's int count");
      }
      buckets_.push_back(Bucket{begin, end, i});
      end = begin;
    }
  }
  requests_.assign(buckets_.size(), MPI_REQUEST_NULL);
  check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &ranks_);
}

DataParallel::~DataParallel() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void DataParallel::broadcast_parameters(int root) {
  if (root < 0 || root >= ranks_)
    fail("broadcast root " + std::to_string(root) + " of " + std::to_string(ranks_) + " ranks");
  CommTimer t(stats_);
  in_int_chunks(static_cast<std::int64_t>(values_.size()), [&](std::int64_t at, int n) {
    check_mpi(MPI_Bcast(values_.data() + at, n, MPI_FLOAT, root, comm_), "MPI_Bcast");
    ++stats_.collectives;
  });
  stats_.bytes += static_cast<std::int64_t>(values_.size() * sizeof(float));
}

std::int64_t DataParallel::allreduce_gradients(std::int64_t local_batch) {
  if (local_batch < 0)
    fail("allreduce_gradients: local_batch must be >= 0, got " + std::to_string(local_batch));
  std::int64_t global_batch = 0;
  MPI_Request count_request = MPI_REQUEST_NULL;
  {
    CommTimer t(stats_);
    check_mpi(MPI_Iallreduce(&local_batch, &global_batch, 1, MPI_INT64_T, MPI_SUM, comm_,
                             &count_request),
              "MPI_Iallreduce");
  }
  // Mean of the local examples -> their sum.
  const float scale = static_cast<float>(local_batch);
  for (auto& g : grads_) g = local_batch == 0 ? 0.0f : g * scale;
  {
    CommTimer t(stats_);
    in_int_chunks(static_cast<std::int64_t>(grads_.size()), [&](std::int64_t at, int n) {
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, grads_.data() + at, n, MPI_FLOAT, MPI_SUM, comm_),
                "MPI_Allreduce");
      ++stats_.collectives;
    });
    check_mpi(MPI_Wait(&count_request, MPI_STATUS_IGNORE), "MPI_Wait");
    ++stats_.collectives;
  }
  stats_.bytes += static_cast<std::int64_t>(grads_.size() * sizeof(float) + sizeof(std::int64_t));
  if (global_batch == 0) fail("allreduce_gradients: every rank had an empty batch");
  const float divisor = static_cast<float>(global_batch);
  for (auto& g : grads_) g /= divisor;
  return global_batch;
}

void DataParallel::start_bucket(std::size_t b) {
  const Bucket& k = buckets_[b];
  CommTimer t(stats_);
  check_mpi(MPI_Iallreduce(MPI_IN_PLACE, grads_.data() + k.begin, static_cast<int>(k.end - k.begin),
                           MPI_FLOAT, MPI_SUM, comm_, &requests_[b]),
            "MPI_Iallreduce");
  ++stats_.collectives;
  stats_.bytes += (k.end - k.begin) * static_cast<std::int64_t>(sizeof(float));
}

void DataParallel::progress() {
  if (started_ == 0) return;
  CommTimer t(stats_);
  int done = 0;
  check_mpi(MPI_Testall(static_cast<int>(started_), requests_.data(), &done, MPI_STATUSES_IGNORE),
            "MPI_Testall");
}

void DataParallel::finish_buckets() {
  while (started_ < buckets_.size()) start_bucket(started_++);
  CommTimer t(stats_);
  check_mpi(MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE),
            "MPI_Waitall");
}

float DataParallel::train_step(std::span<const float> x, std::span<const std::int32_t> labels,
                               std::int64_t local_batch, std::int64_t global_batch,
                               SoftmaxCrossEntropy& loss, const Sgd& sgd) {
  sgd.validate();
  if (local_batch < 0 || global_batch < 1 || local_batch > global_batch) {
    fail("train_step: local_batch " + std::to_string(local_batch) + " and global_batch " +
         std::to_string(global_batch) + " (want 0 <= local <= global, global >= 1)");
  }
  if (static_cast<std::uint64_t>(local_batch) != labels.size()) {
    fail("train_step: local_batch " + std::to_string(local_batch) + " but " +
         std::to_string(labels.size()) + " labels");
  }
  started_ = 0;
  float e = 0.0f;
  if (local_batch > 0) {
    const auto logits = net_.forward(x, local_batch);
    e = loss.forward(logits, labels, net_.output_shape().size());
    // dE_global/dlogits of this rank's examples: the local mean's gradient times local / global.
    const auto d = loss.backward();
    scaled_.resize(d.size());
    const float s = static_cast<float>(local_batch) / static_cast<float>(global_batch);
    for (std::size_t i = 0; i < d.size(); ++i) scaled_[i] = d[i] * s;
    if (options_.overlap) {
      net_.backward(scaled_, false, [&](std::size_t layer) {
        while (started_ < buckets_.size() && buckets_[started_].first_layer >= layer)
          start_bucket(started_++);
        progress();
      });
    } else {
      net_.backward(scaled_);
    }
  } else {
    std::fill(grads_.begin(), grads_.end(), 0.0f);
  }
  if (options_.overlap) {
    finish_buckets();
  } else {
    CommTimer t(stats_);
    in_int_chunks(static_cast<std::int64_t>(grads_.size()), [&](std::int64_t at, int n) {
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, grads_.data() + at, n, MPI_FLOAT, MPI_SUM, comm_),
                "MPI_Allreduce");
      ++stats_.collectives;
    });
    stats_.bytes += static_cast<std::int64_t>(grads_.size() * sizeof(float));
  }
  net_.update(sgd);
  return e;
}

ParameterCheck DataParallel::check_parameters() {
  ParameterCheck c;
  const std::uint64_t mine = checksum(values_);
  c.checksums.assign(static_cast<std::size_t>(ranks_), 0);
  {
    CommTimer t(stats_);
    check_mpi(MPI_Allgather(&mine, 1, MPI_UINT64_T, c.checksums.data(), 1, MPI_UINT64_T, comm_),
              "MPI_Allgather");
    ++stats_.collectives;
  }
  c.identical = std::all_of(c.checksums.begin(), c.checksums.end(),
                            [&](std::uint64_t v) { return v == c.checksums[0]; });
  return c;
}

}  // namespace im2gemm::mpi
