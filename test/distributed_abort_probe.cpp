// Run under mpirun by test/mpi_abort_check.py: the last rank throws (bad input that only it
// sees) while every other rank waits in a collective it will never complete. run_or_abort
// must end the whole job within seconds, with a message naming the rank.
#include <stdexcept>

#include "im2gemm/distributed.hpp"

int main(int argc, char** argv) {
  im2gemm::mpi::Environment env(argc, argv);
  return im2gemm::mpi::run_or_abort([&] {
    if (env.rank() == env.ranks() - 1) {
      throw std::invalid_argument("bad input seen by this rank only (test)");
    }
    MPI_Barrier(MPI_COMM_WORLD);  // never completes: the last rank does not come
    return 0;
  });
}
