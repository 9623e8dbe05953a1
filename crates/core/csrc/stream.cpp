// Device-side prefetch of the next batch: host tensors copied to the device on a side stream
// while the compute stream runs the current step, then handed to the compute stream (which
// waits on the device for the copies' event, not the host) with the caching allocator told
// that the compute stream uses their memory (`record_stream`), as NVIDIA Apex's
// `data_prefetcher` does in Python. Written over c10's device-generic interfaces
// (`VirtualGuardImpl`, `c10::Event`, `StreamGuard`), so it compiles against the CPU headers
// the torch wheel ships; at run time it needs a backend with streams and events (CUDA). Every
// function returns 0, or -1 with libtorch's message in `err`.
#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "selfsup/guard.h"

namespace {

struct SideStream {
  c10::Stream stream;
};

}  // namespace

extern "C" {

// `*out` = a side stream of CUDA device `device_index`, from libtorch's stream pool.
int selfsup_side_stream_new(int device_index, void** out, char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    c10::Device device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device_index));
    c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
    *out = new SideStream{impl.getStreamFromGlobalPool(device, /*isHighPriority=*/false)};
  });
}

void selfsup_side_stream_free(void* stream) { delete static_cast<SideStream*>(stream); }

// Queues on the side stream `stream` the copies of the `n` host tensors `src` to its device
// (each through pinned memory, non-blocking; 4-d ones made channels-last where
// `channels_last`), writes new handles to them in `out[0..n]`, and `*event` = a new event
// recorded on the side stream after the copies. The host does not wait for the copies.
int selfsup_stage(void* stream, const at::Tensor* const* src, size_t n, int channels_last,
                  at::Tensor** out, void** event, char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    const c10::Stream& side = static_cast<SideStream*>(stream)->stream;
    c10::StreamGuard on_side(side);
    std::vector<at::Tensor> staged;
    staged.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      const at::Tensor& t = *src[i];
      at::Tensor host = t.is_pinned() ? t : t.pin_memory();
      at::Tensor d = host.to(side.device(), host.scalar_type(), /*non_blocking=*/true);
      if (channels_last && d.dim() == 4) d = d.contiguous(at::MemoryFormat::ChannelsLast);
      staged.push_back(std::move(d));
    }
    auto ev = std::make_unique<c10::Event>(side.device_type());
    ev->record(side);
    for (size_t i = 0; i < n; ++i) out[i] = new at::Tensor(std::move(staged[i]));
    *event = ev.release();
  });
}

// Hands the `n` tensors `ts` staged with `event` to their device's current stream: the current
// stream waits for the event (on the device), and each tensor's memory is marked as used by
// the current stream, so the caching allocator does not give it to another tensor while the
// compute stream may still read it. Frees `event`, whatever the outcome.
int selfsup_hand_over(void* event, const at::Tensor* const* ts, size_t n, char* err,
                      size_t err_len) {
  std::unique_ptr<c10::Event> ev(static_cast<c10::Event*>(event));
  return selfsup::guarded(err, err_len, [&] {
    if (n == 0) return;
    c10::impl::VirtualGuardImpl impl(ts[0]->device().type());
    const c10::Stream current = impl.getStream(ts[0]->device());
    ev->block(current);
    for (size_t i = 0; i < n; ++i) {
      if (ts[i]->has_storage()) impl.recordDataPtrOnStream(ts[i]->storage().data_ptr(), current);
    }
  });
}

// `*out` = a new uninitialised float tensor of shape `sizes[0..n]` in page-locked host memory
// (libtorch's caching host allocator for the current accelerator), for the loader to write a
// batch into on its own thread: `selfsup_stage` then copies it to the device as it is, with no
// staging copy into pinned memory on the training thread. Needs a GPU.
int selfsup_empty_pinned(const int64_t* sizes, size_t n, at::Tensor** out, char* err,
                         size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    at::Tensor t = at::empty(c10::IntArrayRef(sizes, n),
                             at::TensorOptions().dtype(at::kFloat).pinned_memory(true));
    *out = new at::Tensor(std::move(t));
  });
}

// Frees an event of `selfsup_stage` whose tensors were never handed over.
void selfsup_event_free(void* event) { delete static_cast<c10::Event*>(event); }

}  // extern "C"
