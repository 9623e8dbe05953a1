// c10d's TCPStore, the rendezvous and key-value store of PyTorch's distributed engine, behind a
// C interface (tch 0.24 binds none of torch.distributed). Every function catches what libtorch
// throws and returns it as a message in `err` (`selfsup/guard.h`, from `selfsup-shim-build`).
#include "selfsup/guard.h"
#include "store.h"

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using selfsup::guarded;
using Handle = selfsup::StoreHandle;

}  // namespace

extern "C" {

// Connects to (or, with `is_server`, starts and connects to) the store at host:port.
// `world_size` > 0 makes the server wait for that many clients (itself included) before
// returning; `timeout_ms` bounds the connection and every later blocking call. Returns the
// handle, or null with `err` set.
void* selfsup_store_new(const char* host, uint16_t port, int is_server, int64_t world_size,
                        int64_t timeout_ms, char* err, size_t err_len) {
  Handle* out = nullptr;
  guarded(err, err_len, [&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    if (world_size > 0) opts.numWorkers = static_cast<size_t>(world_size);
    opts.waitWorkers = world_size > 0;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    out = new Handle{std::move(store)};
  });
  return out;
}

void selfsup_store_free(void* h) { delete static_cast<Handle*>(h); }

// The port the store listens on (the server's actual port when 0 was asked for).
int selfsup_store_port(void* h) { return static_cast<Handle*>(h)->store->getPort(); }

int selfsup_store_set(void* h, const char* key, const uint8_t* data, size_t len, char* err,
                      size_t err_len) {
  return guarded(err, err_len, [&] {
    std::vector<uint8_t> v(data, data + len);
    static_cast<Handle*>(h)->store->set(std::string(key), v);
  });
}

// Waits (up to the store's timeout) for `key` and returns its value in a buffer from malloc,
// which the caller frees with `selfsup_store_free_buf`.
int selfsup_store_get(void* h, const char* key, uint8_t** out, size_t* out_len, char* err,
                      size_t err_len) {
  return guarded(err, err_len, [&] {
    auto v = static_cast<Handle*>(h)->store->get(std::string(key));
    *out_len = v.size();
    *out = static_cast<uint8_t*>(std::malloc(v.empty() ? 1 : v.size()));
    if (*out == nullptr) throw std::bad_alloc();
    if (!v.empty()) std::memcpy(*out, v.data(), v.size());
  });
}

void selfsup_store_free_buf(uint8_t* buf) { std::free(buf); }

// Adds `delta` to the counter at `key` (created at 0) and returns the new value in `out`.
int selfsup_store_add(void* h, const char* key, int64_t delta, int64_t* out, char* err,
                      size_t err_len) {
  return guarded(err, err_len,
                 [&] { *out = static_cast<Handle*>(h)->store->add(std::string(key), delta); });
}

// Deletes `key`; `deleted` is 1 when it existed.
int selfsup_store_delete(void* h, const char* key, int* deleted, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    *deleted = static_cast<Handle*>(h)->store->deleteKey(std::string(key)) ? 1 : 0;
  });
}

}  // extern "C"
