// The im2gemm::im2gemm_mpi target: MPI up, this rank's shard of 10 examples printed, MPI down.
// Only built (not run) by the test: running it may need mpirun.
#include <cstdio>

#include <im2gemm/distributed.hpp>

int main(int argc, char** argv) {
  im2gemm::mpi::Environment env(argc, argv);
  const auto r = im2gemm::mpi::shard(10, env.rank(), env.ranks());
  std::printf("mpi_example: rank %d of %d holds examples [%lld, %lld)\n", env.rank(), env.ranks(),
              static_cast<long long>(r.begin), static_cast<long long>(r.end));
  return 0;
}
