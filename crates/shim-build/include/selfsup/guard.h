// What the C functions of the shims share: C++ exceptions must not cross the C boundary, so
// every function runs its body through `guarded`, which catches what libtorch throws and
// returns it as a message in `err` (truncated to `err_len` bytes, NUL-terminated).
#pragma once

#include <cstddef>
#include <cstring>
#include <exception>

namespace selfsup {

inline void write_err(const char* what, char* err, size_t err_len) {
  if (err == nullptr || err_len == 0) return;
  std::strncpy(err, what, err_len - 1);
  err[err_len - 1] = '\0';
}

// Runs `f`; returns 0, or -1 with the exception's message in `err`.
template <typename F>
int guarded(char* err, size_t err_len, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    write_err(e.what(), err, err_len);
  } catch (...) {
    write_err("unknown C++ exception", err, err_len);
  }
  return -1;
}

}  // namespace selfsup
