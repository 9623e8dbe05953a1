// Autocast controls per device type, which tch 0.24 does not expose: its `tch::autocast` only
// toggles the deprecated CUDA-only flag (`at::autocast::set_enabled`) and keeps CUDA's default
// float16, so it can neither run CPU autocast nor pick bfloat16. These functions mirror what
// `torch.autocast(device_type, dtype)` does on entry and exit (torch/amp/autocast_mode.py).
//
// Device codes: 0 = CPU, 1 = CUDA. Every function returns 0 on success and -1 when libtorch
// threw (exceptions must not cross the C boundary).
#include <ATen/autocast_mode.h>

#include <cstdint>

namespace {

c10::DeviceType device_type(int device) {
  return device == 1 ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
}

}  // namespace

extern "C" {

// The autocast flag and dtype (a c10::ScalarType code) of `device` on this thread.
int selfsup_autocast_get(int device, int* enabled, int* dtype) {
  try {
    const auto dev = device_type(device);
    *enabled = at::autocast::is_autocast_enabled(dev) ? 1 : 0;
    *dtype = static_cast<int>(at::autocast::get_autocast_dtype(dev));
    return 0;
  } catch (...) {
    return -1;
  }
}

// Enables bfloat16 autocast on `device` and enters one nesting level; the previous flag and
// dtype are written to `prev_enabled` and `prev_dtype` for `selfsup_autocast_exit`.
int selfsup_autocast_enter_bf16(int device, int* prev_enabled, int* prev_dtype) {
  try {
    const auto dev = device_type(device);
    *prev_enabled = at::autocast::is_autocast_enabled(dev) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(dev));
    at::autocast::set_autocast_enabled(dev, true);
    at::autocast::set_autocast_dtype(dev, at::kBFloat16);
    at::autocast::increment_nesting();
    return 0;
  } catch (...) {
    return -1;
  }
}

// Disables autocast on `device` and enters one nesting level, as
// `torch.autocast(device_type, enabled=False)` does: ops on that device run in their inputs'
// precision until `selfsup_autocast_exit` restores the previous flag and dtype (written to
// `prev_enabled` and `prev_dtype`). The dtype is left as it is.
int selfsup_autocast_enter_disabled(int device, int* prev_enabled, int* prev_dtype) {
  try {
    const auto dev = device_type(device);
    *prev_enabled = at::autocast::is_autocast_enabled(dev) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(dev));
    at::autocast::set_autocast_enabled(dev, false);
    at::autocast::increment_nesting();
    return 0;
  } catch (...) {
    return -1;
  }
}

// Leaves one nesting level (clearing the cast cache when it was the outermost one) and restores
// the flag and dtype saved by `selfsup_autocast_enter_bf16` or
// `selfsup_autocast_enter_disabled`.
int selfsup_autocast_exit(int device, int prev_enabled, int prev_dtype) {
  try {
    const auto dev = device_type(device);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(dev, prev_enabled != 0);
    at::autocast::set_autocast_dtype(dev, static_cast<c10::ScalarType>(prev_dtype));
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
