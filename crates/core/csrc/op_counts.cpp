// Counts of the operators libtorch runs, by name, from every thread: a global RecordFunction
// callback (the hook PyTorch's profiler uses), for comparing a step's operators with PyTorch's
// (`selfsup_core::op_counts`). Dispatched ATen operators (`aten::conv2d`, and those they call)
// and autograd's backward functions (`ConvolutionBackward0`) are counted; nothing is timed.
#include <ATen/record_function.h>

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "selfsup/guard.h"

namespace {

std::mutex& counts_mutex() {
  static std::mutex m;
  return m;
}

std::map<std::string, long long>& counts() {
  static std::map<std::string, long long> c;
  return c;
}

at::CallbackHandle& handle() {
  static at::CallbackHandle h = 0;
  return h;
}

std::atomic<bool>& enabled() {
  static std::atomic<bool> on{false};
  return on;
}

std::unique_ptr<at::ObserverContext> count(const at::RecordFunction& fn) {
  if (enabled().load(std::memory_order_relaxed)) {
    std::lock_guard<std::mutex> lock(counts_mutex());
    ++counts()[fn.name()];
  }
  return nullptr;
}

}  // namespace

extern "C" {

// Counts from now on (`on` != 0, registering the callback the first time) or not (`on` == 0:
// the callback stays registered and returns at once); the counts are kept.
int selfsup_op_counts_enable(int on, char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    if (on != 0 && handle() == 0) {
      handle() = at::addGlobalCallback(
          at::RecordFunctionCallback(count)
              .needsInputs(false)
              .scopes({at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION}));
    }
    enabled().store(on != 0, std::memory_order_relaxed);
  });
}

// Writes the counts so far as lines `name\tcount\n` into `buf` (at most `len` bytes with the
// final NUL) and returns the bytes the whole text needs (without the NUL); `clear` != 0 then
// clears them. A caller whose buffer was short calls again with a larger one and `clear` as
// before. -1 with libtorch's message in `err` where it fails.
long long selfsup_op_counts_take(int clear, char* buf, size_t len, char* err, size_t err_len) {
  std::string text;
  int rc = selfsup::guarded(err, err_len, [&] {
    std::lock_guard<std::mutex> lock(counts_mutex());
    for (const auto& [name, n] : counts()) {
      text += name;
      text += '\t';
      text += std::to_string(n);
      text += '\n';
    }
    if (clear != 0 && text.size() < len) counts().clear();
  });
  if (rc < 0) return -1;
  if (len > 0) {
    size_t n = text.size() < len - 1 ? text.size() : len - 1;
    std::memcpy(buf, text.data(), n);
    buf[n] = '\0';
  }
  return static_cast<long long>(text.size());
}

}  // extern "C"
