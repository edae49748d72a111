// What the fused kernels share: splitting rows over TensorFlow's intra-op pool in a fixed
// number of chunks, and the per-CPU copies of their hot loops.
#ifndef ENET_CSRC_PARALLEL_H_
#define ENET_CSRC_PARALLEL_H_

#include <algorithm>
#include <cstdint>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/threadpool.h"

namespace enet {

// A fixed number of chunks whatever the thread count, so that every reduction adds its
// per-chunk partial sums in the same order: the same inputs always give the same bits.
constexpr int64_t kChunks = 64;

// Calls fn(chunk, begin, end) for the kChunks contiguous slices of [0, n), on the op's
// intra-op pool.
template <typename Fn>
void ForChunks(tensorflow::OpKernelContext* ctx, int64_t n, Fn fn) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  const int64_t size = (n + kChunks - 1) / kChunks;
  pool->ParallelFor(kChunks, /*cost_per_unit=*/1 << 30, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const int64_t b = c * size, e = std::min(n, b + size);
      if (b < e) fn(c, b, e);
    }
  });
}

}  // namespace enet

// TensorFlow's flags target the baseline x86-64 (SSE2). On x86-64 GCC also builds AVX2 and
// AVX-512 copies of a function marked ENET_SIMD and picks one per CPU when the library
// loads, so the library stays portable and the loops use the machine's vectors.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ENET_SIMD __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ENET_SIMD
#endif

#endif  // ENET_CSRC_PARALLEL_H_
