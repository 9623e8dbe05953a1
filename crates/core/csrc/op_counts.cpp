// Counts and self times of the operators libtorch runs, by name, from every thread: a global
// RecordFunction callback (the hook PyTorch's profiler uses), for comparing a step's operators
// with PyTorch's (`selfsup_core::op_counts`). Dispatched ATen operators (`aten::conv2d`, and
// those they call), autograd's backward functions (`ConvolutionBackward0`) and selfsup's own
// kernels' entry points (`selfsup::winograd_conv`) are counted. An operator's self time is its
// wall time on its thread less that of the operators it ran there, as PyTorch's profiler reports
// it (`self_cpu_time_total`); the work of an operator's intra-op threads is its own.
#include <ATen/record_function.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "selfsup/guard.h"

namespace {

std::mutex& counts_mutex() {
  static std::mutex m;
  return m;
}

// An operator's calls and the nanoseconds of their self time.
struct Tally {
  long long calls = 0;
  long long self_ns = 0;
};

std::map<std::string, Tally>& counts() {
  static std::map<std::string, Tally> c;
  return c;
}

long long now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A running operator: when it started and the wall time of the operators it ran on its thread.
struct Running : at::ObserverContext {
  long long start = 0;
  long long children_ns = 0;
};

// The operators running on this thread, innermost last.
thread_local std::vector<Running*> running;

at::CallbackHandle& handle() {
  static at::CallbackHandle h = 0;
  return h;
}

std::atomic<bool>& enabled() {
  static std::atomic<bool> on{false};
  return on;
}

std::unique_ptr<at::ObserverContext> start(const at::RecordFunction&) {
  if (!enabled().load(std::memory_order_relaxed)) return nullptr;
  auto r = std::make_unique<Running>();
  r->start = now_ns();
  running.push_back(r.get());
  return r;
}

// An operator started while counting ends: its call and self time are tallied (also when
// counting stopped since), and its wall time is its enclosing operator's children's.
void end(const at::RecordFunction& fn, at::ObserverContext* ctx) {
  auto* r = static_cast<Running*>(ctx);
  if (r == nullptr) return;
  const long long wall = now_ns() - r->start;
  // The innermost, unless an operator ended on another thread than it started on (then none of
  // this thread's operators ran it).
  bool here = false;
  for (auto it = running.rbegin(); it != running.rend(); ++it) {
    if (*it == r) {
      running.erase(std::next(it).base());
      here = true;
      break;
    }
  }
  if (here && !running.empty()) running.back()->children_ns += wall;
  std::lock_guard<std::mutex> lock(counts_mutex());
  Tally& t = counts()[fn.name()];
  ++t.calls;
  t.self_ns += std::max(0LL, wall - r->children_ns);
}

}  // namespace

extern "C" {

// Counts from now on (`on` != 0, registering the callback the first time) or not (`on` == 0:
// the callback stays registered and returns at once); the counts are kept.
int selfsup_op_counts_enable(int on, char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    if (on != 0 && handle() == 0) {
      handle() = at::addGlobalCallback(
          at::RecordFunctionCallback(start, end)
              .needsInputs(false)
              .scopes({at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION}));
    }
    enabled().store(on != 0, std::memory_order_relaxed);
  });
}

// Writes the counts so far as lines `name\tcalls\tself_ns\n` into `buf` (at most `len` bytes
// with the final NUL) and returns the bytes the whole text needs (without the NUL); `clear` != 0
// then clears them. A caller whose buffer was short calls again with a larger one and `clear` as
// before. -1 with libtorch's message in `err` where it fails.
long long selfsup_op_counts_take(int clear, char* buf, size_t len, char* err, size_t err_len) {
  std::string text;
  int rc = selfsup::guarded(err, err_len, [&] {
    std::lock_guard<std::mutex> lock(counts_mutex());
    for (const auto& [name, t] : counts()) {
      text += name;
      text += '\t';
      text += std::to_string(t.calls);
      text += '\t';
      text += std::to_string(t.self_ns);
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
