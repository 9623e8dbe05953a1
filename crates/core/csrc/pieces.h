// The bound on the temporaries of one piece of a convolution pass, shared by `winograd.cpp`
// (transformed tiles) and `conv_gemm.cpp` (im2col columns): a pass runs over the batch (or the
// filter's rows) in pieces that stay within it, so its memory does not grow with the batch.
// The pieces depend on the shapes and this setting only, never on timing: a run's sums keep
// their order from run to run.
#pragma once

#include <atomic>
#include <cstdint>

namespace selfsup {

// Bytes one piece of a pass may hold (64 MiB; tests set less through
// `selfsup_winograd_piece_bytes`). One counter for the whole library (an inline function's
// static).
inline std::atomic<int64_t>& piece_bytes() {
  static std::atomic<int64_t> bytes{int64_t{64} << 20};
  return bytes;
}

}  // namespace selfsup
