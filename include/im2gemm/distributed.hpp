// im2gemm_mpi: data-parallel training of a Sequential over MPI processes ("ranks"), on one
// machine or several. Every rank holds the whole network and computes on its share of each
// global minibatch; after the backward pass the gradients are summed over the ranks
// (MPI_Allreduce), so every rank applies the same update to the same parameters.
//
// A separate library (libim2gemm_mpi.a, pkg-config im2gemm_mpi), built only when MPI is found:
// the core library has no MPI dependency. Include this header in code compiled against MPI.
//
// Every function here is collective over the trainer's communicator unless it says otherwise:
// every rank must call it, in the same order. An error that only some ranks see (bad input, a
// corrupt shard) must end the whole job, not leave the others waiting in their next collective:
// abort_job / run_or_abort do that.
#pragma once

// Only MPI's C interface is used: keep Open MPI's and MPICH's deprecated C++ bindings out.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <cstdint>
#include <exception>
#include <span>
#include <string>
#include <vector>

#include "im2gemm/layers.hpp"

namespace im2gemm::mpi {

/// MPI_Init_thread (funneled: only the thread that called it calls MPI; OpenMP threads never
/// do) in the constructor, MPI_Finalize in the destructor. One per process.
class Environment {
 public:
  Environment(int& argc, char**& argv);
  ~Environment();
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;
  int rank() const { return rank_; }    ///< in MPI_COMM_WORLD
  int ranks() const { return ranks_; }  ///< size of MPI_COMM_WORLD

 private:
  int rank_ = 0, ranks_ = 1;
};

/// Prints "im2gemm: rank R of N: message" on stderr and ends every process of the job
/// (MPI_Abort on MPI_COMM_WORLD with the given exit code). Not collective: for an error only
/// this rank sees, since the others would otherwise wait forever in their next collective.
[[noreturn]] void abort_job(const std::string& message, int code = 1);

/// Runs body() and returns its result; an exception escaping it ends the whole job through
/// abort_job(what()).
template <class F>
auto run_or_abort(F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const std::exception& e) {
    abort_job(e.what());
  } catch (...) {
    abort_job("unknown exception");
  }
}

/// A half-open range of indices [begin, end).
struct Range {
  std::int64_t begin = 0, end = 0;
  std::int64_t size() const { return end - begin; }
  friend bool operator==(const Range&, const Range&) = default;
};

/// Sharding a dataset of `count` examples over `ranks` ranks and splitting every global
/// minibatch between them (local computation, no communication).
///
/// Shards are contiguous blocks: rank r holds examples [shard(r).begin, shard(r).end), the
/// ranks below count % ranks one example more than the others, so every example belongs to
/// exactly one rank. An epoch runs steps(count, global_batch) steps; step s covers the epoch's
/// positions [s * global_batch, min((s+1) * global_batch, count)), and position p goes to rank
/// p % ranks, as its local position p / ranks. So each rank takes global_batch / ranks
/// examples of a step, give or take one, and over an epoch exactly its shard, every example
/// once (which example sits at a local position is the trainer's choice: its shuffle of the
/// shard). A step's local slice may be empty (a last step with fewer examples than ranks).
/// Throws std::invalid_argument unless count >= 0, global_batch >= 1, 0 <= rank < ranks.
Range shard(std::int64_t count, int rank, int ranks);
std::int64_t steps(std::int64_t count, std::int64_t global_batch);
/// The examples of step s: min(global_batch, count - s * global_batch); s in [0, steps).
std::int64_t step_batch(std::int64_t count, std::int64_t global_batch, std::int64_t step);
/// Rank's local positions of step s, within [0, shard(count, rank, ranks).size()).
Range step_slice(std::int64_t count, std::int64_t global_batch, std::int64_t step, int rank,
                 int ranks);

/// Time and bytes in communication since the last reset (this rank's view).
struct CommunicationStats {
  double seconds = 0.0;          ///< wall time inside MPI calls (includes waiting for peers)
  std::int64_t bytes = 0;        ///< bytes this rank contributed to reductions and broadcasts
  std::int64_t collectives = 0;  ///< collectives started
};

/// The result of DataParallel::check_parameters.
struct ParameterCheck {
  bool identical = false;                ///< every rank holds bitwise the same parameters
  std::vector<std::uint64_t> checksums;  ///< per rank, rank 0 first
  /// "parameters identical on all ranks", or "parameters differ: rank 1 checksum ... (rank 0 ...)".
  std::string summary() const;
};

/// 64-bit FNV-1a over the bit patterns of values (not collective).
std::uint64_t checksum(std::span<const float> values);

/// Data-parallel training of one Sequential. Holds the network's contiguous views
/// (Sequential::parameter_values and parameter_gradients): add no layer to the network while
/// this trainer exists. Uses its own duplicate of comm, so its collectives never match the
/// caller's messages.
class DataParallel {
 public:
  struct Options {
    /// true: train_step starts the allreduce of a bucket of layers (at least bucket_floats
    /// gradients, or the rest of the network) as soon as their backward is done, and lets MPI
    /// progress between the later layers. false (default): one blocking allreduce after
    /// backward. MPI progresses a non-blocking collective only inside MPI calls, so the
    /// overlap is bounded by the calls between layers; on one machine the blocking allreduce
    /// measured faster (README, "Data-parallel training").
    bool overlap = false;
    std::int64_t bucket_floats = 1 << 16;
  };

  DataParallel(Sequential& net, MPI_Comm comm, Options options);
  explicit DataParallel(Sequential& net, MPI_Comm comm = MPI_COMM_WORLD)
      : DataParallel(net, comm, Options{}) {}
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int rank() const { return rank_; }
  int ranks() const { return ranks_; }
  Sequential& network() { return net_; }

  /// Every rank's parameters become root's, bit for bit. Momentum buffers are kept.
  void broadcast_parameters(int root = 0);

  /// The gradient view holds the mean gradient of this rank's local_batch examples (what
  /// backward gives after a mean loss such as SoftmaxCrossEntropy; local_batch 0: this rank had
  /// no examples, its gradients count as zero whatever the buffer holds). Afterwards every
  /// rank holds the mean over every rank's examples: each rank's gradient times its
  /// local_batch, summed over the ranks (one allreduce), then divided by the global batch,
  /// which is returned. Throws std::invalid_argument if local_batch < 0 (before any
  /// communication: the job must then abort) or the global batch is 0.
  std::int64_t allreduce_gradients(std::int64_t local_batch);

  /// One data-parallel SGD step: forward and loss on this rank's local_batch examples (x, labels;
  /// local_batch may be 0), backward of the *global* mean loss (the loss's gradient scaled by
  /// local_batch / global_batch, so the summed gradients need no further scaling), the
  /// gradients summed over the ranks (overlapped with backward if options.overlap), then the
  /// update. global_batch must be the sum of every rank's local_batch (the schedule of
  /// step_slice gives it). Returns this rank's mean loss (0 for an empty local batch).
  float train_step(std::span<const float> x, std::span<const std::int32_t> labels,
                   std::int64_t local_batch, std::int64_t global_batch, SoftmaxCrossEntropy& loss,
                   const Sgd& sgd);

  /// Every rank's checksum of its parameters, compared (an allgather): identical is true on
  /// every rank exactly when all checksums agree.
  ParameterCheck check_parameters();

  const CommunicationStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 private:
  struct Bucket {
    std::int64_t begin = 0, end = 0;  ///< in the gradient view
    std::size_t first_layer = 0;      ///< the bucket is complete once this layer is done
  };
  void start_bucket(std::size_t b);
  void progress();
  void finish_buckets();

  Sequential& net_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  Options options_;
  int rank_ = 0, ranks_ = 1;
  std::span<float> values_, grads_;
  std::vector<Bucket> buckets_;        ///< last layers first
  std::vector<MPI_Request> requests_;  ///< one per bucket
  std::size_t started_ = 0;            ///< buckets started in this step
  std::vector<float> scaled_;          ///< the loss gradient scaled to the global batch
  CommunicationStats stats_;
};

}  // namespace im2gemm::mpi
