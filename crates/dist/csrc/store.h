// The store handle the C interface passes around, shared by the store shim (store.cpp) and the
// NCCL shim (nccl.cpp), which hands the same store to ProcessGroupNCCL for its rendezvous.
#pragma once

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

namespace selfsup {

struct StoreHandle {
  c10::intrusive_ptr<c10d::TCPStore> store;
};

}  // namespace selfsup
