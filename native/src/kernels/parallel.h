// A small fork-join pool for the elementwise loops (OpenBLAS threads its own GEMMs).
// Work is cut into chunks that depend only on the problem size, never on the thread count,
// and reductions add their per-chunk partial results in chunk order: results are
// bit-identical whatever the number of threads.
#pragma once
#include <cstdint>
#include <functional>

namespace dw {

// Threads used by parallel_for (the caller counts as one). Clamped to [1, 64].
void set_pool_threads(int n);
int pool_threads();

// Runs fn(chunk) for chunk in [0, nchunks) on the pool. A call made while the pool is busy
// (nested, or from another thread) runs serially in the caller.
void parallel_chunks(int64_t nchunks, const std::function<void(int64_t)>& fn);

// fn(begin, end) over [0, n) in chunks of at least `grain` items.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// Like parallel_for, but each chunk also gets a zeroed float[len] to accumulate into; the
// partials are then added to out[len] in chunk order (deterministic).
void parallel_reduce(int64_t n, int64_t grain, int64_t len, float* out,
                     const std::function<void(int64_t, int64_t, float*)>& fn);

}  // namespace dw
