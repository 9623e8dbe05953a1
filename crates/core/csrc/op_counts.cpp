// Counts and self times of the operators libtorch runs, by name, from every thread: a global
// RecordFunction callback (the hook PyTorch's profiler uses), for comparing a step's operators
// with PyTorch's (`selfsup_core::op_counts`). Dispatched ATen operators (`aten::conv2d`, and
// those they call), autograd's backward functions (`ConvolutionBackward0`) and selfsup's own
// kernels' entry points (`selfsup::winograd_conv`) are counted. An operator's self time is its
// wall time on its thread less that of the operators it ran there, as PyTorch's profiler reports
// it (`self_cpu_time_total`); the work of an operator's intra-op threads is its own.
//
// Keyed by shapes (`selfsup_op_counts_enable(on, 1, ...)`), each name is followed by its
// arguments as `bench/train_step.py --op-shapes` writes PyTorch's (from its profiler's trace):
// tensors as `BFloat16[128, 64, 8, 8]cl` (`cl` channels-last, `s` neither layout, nothing when
// contiguous), lists as `[1, 1]` or `[True, False]`, an absent tensor as `None`, other scalars
// left out; so that a step's operators can be told apart layer by layer.
#include <ATen/record_function.h>
#include <ATen/core/ivalue.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
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
  // The operator's key (keyed by shapes, taken while its inputs are at hand).
  std::string key;
};

// The operators running on this thread, innermost last.
thread_local std::vector<Running*> running;

// The callback's handle (0 before the first), and whether it asks for the inputs (keyed by
// shapes).
at::CallbackHandle& handle() {
  static at::CallbackHandle h = 0;
  return h;
}

bool& handle_shapes() {
  static bool s = false;
  return s;
}

// What is counted now: 0 nothing, 1 by name, 2 by shapes.
std::atomic<int>& counting() {
  static std::atomic<int> c{0};
  return c;
}

// A tensor's layout as the key writes it: "" contiguous, "cl" channels-last, "s" neither.
const char* layout(const at::Tensor& t) {
  if (t.is_contiguous()) return "";
  if (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast)) return "cl";
  return "s";
}

template <typename T>
void append_list(std::string& key, const T& list) {
  key += '[';
  bool first = true;
  for (const auto& v : list) {
    if (!first) key += ", ";
    first = false;
    if constexpr (std::is_same_v<std::decay_t<decltype(v)>, bool>) {
      key += v ? "True" : "False";
    } else {
      key += std::to_string(v);
    }
  }
  key += ']';
}

// `name` followed by its tensor and list arguments (see the header).
std::string shapes_key(const at::RecordFunction& fn) {
  std::string key = fn.name();
  for (const c10::IValue& v : fn.inputs()) {
    std::string arg;
    if (v.isTensor()) {
      const at::Tensor& t = v.toTensor();
      if (!t.defined()) {
        arg = "None";
      } else {
        arg = c10::toString(t.scalar_type());
        append_list(arg, t.sizes());
        arg += layout(t);
      }
    } else if (v.isNone()) {
      arg = "None";
    } else if (v.isIntList()) {
      append_list(arg, v.toIntVector());
    } else if (v.isBoolList()) {
      std::vector<bool> b;
      for (bool x : v.toBoolList()) b.push_back(x);
      append_list(arg, b);
    } else {
      continue;
    }
    key += ' ';
    key += arg;
  }
  return key;
}

// The callback keyed by name (`Shapes` false) or by shapes.
template <bool Shapes>
std::unique_ptr<at::ObserverContext> start(const at::RecordFunction& fn) {
  if (counting().load(std::memory_order_relaxed) != (Shapes ? 2 : 1)) return nullptr;
  auto r = std::make_unique<Running>();
  r->key = Shapes ? shapes_key(fn) : std::string(fn.name());
  r->start = now_ns();
  running.push_back(r.get());
  return r;
}

// An operator started while counting ends: its call and self time are tallied (also when
// counting stopped since), and its wall time is its enclosing operator's children's.
void end(const at::RecordFunction&, at::ObserverContext* ctx) {
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
  Tally& t = counts()[r->key];
  ++t.calls;
  t.self_ns += std::max(0LL, wall - r->children_ns);
}

}  // namespace

extern "C" {

// Counts from now on (`on` != 0), keyed by name, or by name and shapes where `shapes` != 0
// (registering the callback for that key, in place of one for the other), or not (`on` == 0:
// the callback stays registered and returns at once); the counts so far are kept.
int selfsup_op_counts_enable(int on, int shapes, char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    const int k = shapes != 0 ? 1 : 0;
    // One callback at a time (so that counting by name does not pay for the inputs).
    if (on != 0 && handle() != 0 && handle_shapes() != (k == 1)) {
      counting().store(0, std::memory_order_relaxed);
      at::removeCallback(handle());
      handle() = 0;
    }
    if (on != 0 && handle() == 0) {
      handle_shapes() = k == 1;
      handle() = at::addGlobalCallback(
          at::RecordFunctionCallback(k == 1 ? start<true> : start<false>, end)
              .needsInputs(k == 1)
              .scopes({at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION}));
    }
    counting().store(on != 0 ? k + 1 : 0, std::memory_order_relaxed);
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
