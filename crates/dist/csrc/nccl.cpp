// c10d's ProcessGroupNCCL (libtorch_cuda) behind a C interface: the collectives of a job on
// CUDA tensors, over NCCL, with the job's TCPStore as NCCL's rendezvous (under the key prefix
// `nccl/`, apart from the store collectives' keys). Built only with the crate's `nccl` feature:
// its headers need CUDA's `crt/` and CCCL headers (pip: nvidia-cuda-crt, nvidia-cuda-cccl),
// which the torch wheel does not ship. Every call waits for its collective's work object,
// which for NCCL orders the current CUDA stream after the collective (the host goes on).
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "selfsup/guard.h"
#include "store.h"

namespace {

struct Nccl {
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> pg;
};

c10d::ProcessGroupNCCL& pg(void* h) { return *static_cast<Nccl*>(h)->pg; }

}  // namespace

extern "C" {

// A process group of `size` ranks over the store behind `store` (a selfsup::StoreHandle),
// this process being `rank`; `timeout_ms` bounds every collective. Returns the handle, or
// null with `err` set.
void* selfsup_nccl_new(void* store, int rank, int size, int64_t timeout_ms, char* err,
                       size_t err_len) {
  Nccl* out = nullptr;
  selfsup::guarded(err, err_len, [&] {
    auto* h = static_cast<selfsup::StoreHandle*>(store);
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("nccl", h->store);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    out = new Nccl{c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank, size, opts)};
  });
  return out;
}

void selfsup_nccl_free(void* h) { delete static_cast<Nccl*>(h); }

// Sums `*t` (a CUDA tensor) over the ranks in place.
int selfsup_nccl_all_reduce_sum(void* h, const at::Tensor* t, char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    std::vector<at::Tensor> v{*t};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    pg(h).allreduce(v, o)->wait();
  });
}

// Starts summing `*t` (a contiguous CUDA tensor) over the ranks in place; `*work` = a handle
// to the collective's work, for `selfsup_nccl_work_wait` (which frees it). NCCL's stream first
// waits for the calling thread's current stream (the kernels that wrote `*t`), and the host
// goes on at once: the reducer's buckets start this way from backward's gradient hooks.
int selfsup_nccl_all_reduce_start(void* h, const at::Tensor* t, void** work, char* err,
                                  size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    std::vector<at::Tensor> v{*t};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    *work = new c10::intrusive_ptr<c10d::Work>(pg(h).allreduce(v, o));
  });
}

// Waits for a work of `selfsup_nccl_all_reduce_start` (the calling thread's current stream is
// ordered after the collective; the host goes on) and frees it, whatever the outcome.
int selfsup_nccl_work_wait(void* work, char* err, size_t err_len) {
  std::unique_ptr<c10::intrusive_ptr<c10d::Work>> w(
      static_cast<c10::intrusive_ptr<c10d::Work>*>(work));
  return selfsup::guarded(err, err_len, [&] { (*w)->wait(); });
}

// `*out` (world × the rows of `*in`, contiguous) = every rank's `*in` in rank order.
int selfsup_nccl_all_gather(void* h, const at::Tensor* out, const at::Tensor* in, char* err,
                            size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    at::Tensor o = *out;
    at::Tensor i = in->contiguous();
    pg(h)._allgather_base(o, i)->wait();
  });
}

// `*t` = rank `root`'s `*t`.
int selfsup_nccl_broadcast(void* h, const at::Tensor* t, int root, char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    std::vector<at::Tensor> v{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    pg(h).broadcast(v, o)->wait();
  });
}

}  // extern "C"
