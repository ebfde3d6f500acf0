# Sourced by the scripts: repository root, build helpers, and the OpenBLAS kernel choice.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# configure_build DIR [meson options...]: sets up DIR once (reconfigures if options change).
configure_build() {
  local dir="$1"; shift
  if [ -f "$dir/build.ninja" ]; then
    meson configure "$dir" "$@" >/dev/null
  else
    meson setup "$dir" "$@"
  fi
  ninja -C "$dir"
}

# choose_blas_kernel DIR: Debian's OpenBLAS 0.3.21 does not recognise some new CPUs and then
# silently runs its generic SSE3 kernel. If the user has not chosen a kernel and the built
# blas_info reports such a fallback, export the best kernel the CPU's flags allow.
choose_blas_kernel() {
  local dir="$1" core
  if [ -n "${OPENBLAS_CORETYPE:-}" ]; then
    echo "blas: OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE set by the caller"
  else
    core="$("$dir/examples/blas_info" --coretype)"
    if [ -n "$core" ]; then
      export OPENBLAS_CORETYPE="$core"
      echo "blas: OpenBLAS fell back to its generic kernel; exporting OPENBLAS_CORETYPE=$core"
    fi
  fi
  echo "blas: $("$dir/examples/blas_info")"
}
