// Inter-block synchronisation of the persistent kernel: release/acquire counters and bounded
// spin-waits. Every wait ends: when its condition holds, when the launch is being abandoned,
// or when the watchdog fires (then the launch is abandoned with DeviceTimeout).
#pragma once

#include <cstdint>
#include <cuda/atomic>

#include "flashmoe/status.hpp"
#include "workspace.hpp"

namespace flashmoe::detail {

using DeviceAtomicU32 = cuda::atomic_ref<std::uint32_t, cuda::thread_scope_device>;

__device__ __forceinline__ std::uint32_t load_acquire(std::uint32_t* p) {
  return DeviceAtomicU32(*p).load(cuda::memory_order_acquire);
}
__device__ __forceinline__ std::uint32_t load_relaxed(std::uint32_t* p) {
  return DeviceAtomicU32(*p).load(cuda::memory_order_relaxed);
}
__device__ __forceinline__ void store_release(std::uint32_t* p, std::uint32_t v) {
  DeviceAtomicU32(*p).store(v, cuda::memory_order_release);
}
__device__ __forceinline__ void store_relaxed(std::uint32_t* p, std::uint32_t v) {
  DeviceAtomicU32(*p).store(v, cuda::memory_order_relaxed);
}
// Returns the old value. acq_rel: publishes this block's writes (ordered before by a
// __syncthreads) and sees everything published by earlier increments.
__device__ __forceinline__ std::uint32_t fetch_add_acq_rel(std::uint32_t* p, std::uint32_t v) {
  return DeviceAtomicU32(*p).fetch_add(v, cuda::memory_order_acq_rel);
}
__device__ __forceinline__ std::uint32_t fetch_add_relaxed(std::uint32_t* p, std::uint32_t v) {
  return DeviceAtomicU32(*p).fetch_add(v, cuda::memory_order_relaxed);
}
// Publishes this block's writes (ordered before by a barrier) to whoever acquires the count;
// the old value is not needed.
__device__ __forceinline__ void add_release(std::uint32_t* p, std::uint32_t v) {
  DeviceAtomicU32(*p).fetch_add(v, cuda::memory_order_release);
}

// Programmatic dependent launch (ForwardOptions::programmatic_launch). Both are no-ops for a
// grid launched without it. Code built for an architecture before sm_90 has neither, and the
// host then never launches it that way (kGridDependencyCompiled).
// Every thread, before its first access to memory another kernel may use: returns once the
// grids this one depends on have completed and their writes are visible.
__device__ __forceinline__ void wait_for_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
// Once the block has no more tasks: the next kernel on the stream may be scheduled when every
// block of this grid has said so or exited (it still waits for this grid's completion itself).
__device__ __forceinline__ void allow_dependent_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The 128-byte L2 line at `line` (128-byte aligned) leaves L2 without its write-back; its
// contents become undefined. For scratch that nobody reads again this launch.
__device__ __forceinline__ void discard_l2_line(const void* line) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("discard.global.L2 [%0], 128;" ::"l"(line) : "memory");
#endif
}

__device__ __forceinline__ std::uint64_t global_timer_ns() {
  std::uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// The team: threads 0-255, the whole block of the 256-thread kernels and the two consumer
// warpgroups of the warp-specialised one (its producer warpgroup takes no part). Routing and the
// tiles of TileMma synchronise on this named barrier instead of __syncthreads, which in a
// 256-thread block is the same barrier.
__device__ __forceinline__ void team_sync() { asm volatile("bar.sync 1, 256;\n" ::: "memory"); }

struct Control {
  std::uint32_t* words;       // kControlWords lines of kControlStride
  std::int32_t* status_word;  // ForwardOptions::device_status, or null
  __device__ std::uint32_t* word(ControlWord w) const { return words + w * kControlStride; }

  __device__ bool aborted() const { return load_relaxed(word(kAbort)) != 0; }

  // Record an error where the host looks for it: the Layer's sticky error (the first one
  // stays) and the caller's status word (if it still holds 0). Any thread may call it.
  __device__ void report(StatusCode code, ErrorSite site) const {
    std::uint32_t none = 0;
    if (DeviceAtomicU32(*word(kStickyError))
            .compare_exchange_strong(none, static_cast<std::uint32_t>(code),
                                     cuda::memory_order_relaxed)) {
      store_relaxed(word(kErrorSite), site);
    }
    if (status_word != nullptr) {
      std::int32_t ok = 0;
      cuda::atomic_ref<std::int32_t, cuda::thread_scope_device>(*status_word)
          .compare_exchange_strong(ok, static_cast<std::int32_t>(code), cuda::memory_order_relaxed);
    }
  }

  // Record the error and make every block of the launch leave.
  __device__ void fail(StatusCode code, ErrorSite site) const {
    report(code, site);
    store_release(word(kAbort), 1);
  }
};

// The scratch's owner word (workspace.hpp): a launch's blocks all carry the same nonzero id.
__device__ __forceinline__ unsigned long long launch_owner_id() {
  unsigned long long grid;
  asm volatile("mov.u64 %0, %%gridid;" : "=l"(grid));
  const unsigned long long id = (grid + 1) & kOwnerIdMask;
  return id != 0 ? id : 1;
}

using DeviceAtomicU64 = cuda::atomic_ref<unsigned long long, cuda::thread_scope_device>;

// Thread 0 of each block, beside its first ticket claim (the two round trips overlap). True
// when the scratch is this launch's: idle (this block takes it) or taken by another block of
// the launch. Otherwise another launch owns it or it is refused: the block marks the conflict
// (so that the owner leaves the scratch refused, since more blocks of this launch may come
// after it) and must touch nothing. Relaxed: a launch that may use the scratch follows the
// previous owner in stream order, which already orders every access.
__device__ inline bool claim_scratch(unsigned long long* owner, unsigned long long id) {
  DeviceAtomicU64 w(*owner);
  // A load first: most blocks find the word already theirs, and a read of a shared line is
  // cheaper than one more read-modify-write queued on it.
  unsigned long long seen = w.load(cuda::memory_order_relaxed);
  if (seen == 0 &&
      w.compare_exchange_strong(seen, id, cuda::memory_order_relaxed, cuda::memory_order_relaxed)) {
    return true;
  }
  if ((seen & ~kOwnerConflict) == id) return true;
  w.fetch_or(kOwnerConflict, cuda::memory_order_relaxed);
  return false;
}

// The last block of the owning launch, after the state reset: the scratch is idle again (the
// word held the id alone), or refused (kOwnerConflict alone) if another launch tried to take
// it meanwhile. No result is read back, so the launch's end does not wait for the round trip.
__device__ inline void release_scratch(unsigned long long* owner) {
  DeviceAtomicU64(*owner).fetch_and(kOwnerConflict, cuda::memory_order_release);
}

// What a device-side wait needs to give up: the launch's control words and its time limit.
struct Watchdog {
  Control ctl;
  std::uint64_t timeout_ns;
};

// Spins (one thread) until *p >= target, and leaves the value it saw in `seen`. False when the
// launch is abandoned instead. `spun` tells whether the condition did not already hold (for the
// trace).
__device__ inline bool wait_at_least(const Control& ctl, std::uint32_t* p, std::uint32_t target,
                                     std::uint64_t timeout_ns, ErrorSite site, bool& spun,
                                     std::uint32_t& seen) {
  spun = false;
  if ((seen = load_acquire(p)) >= target) return true;
  spun = true;
  const std::uint64_t start = global_timer_ns();
  // Short sleeps: every microsecond a waiter oversleeps is on the critical path (all blocks
  // wait for the tile table, down tiles for their gate/up tiles). The abort flag and the clock
  // are checked every 16th poll only, so a poll costs one load.
  unsigned backoff = 32;
  for (unsigned polls = 1;; ++polls) {
    __nanosleep(backoff);
    if (backoff < 128) backoff *= 2;
    if ((seen = load_acquire(p)) >= target) return true;
    if (polls % 16 == 0) {
      if (ctl.aborted()) return false;
      if (global_timer_ns() - start > timeout_ns) {
        ctl.fail(StatusCode::DeviceTimeout, site);
        return false;
      }
    }
  }
}
// The same, for callers that need only whether the condition holds.
__device__ inline bool wait_at_least(const Control& ctl, std::uint32_t* p, std::uint32_t target,
                                     std::uint64_t timeout_ns, ErrorSite site, bool& spun) {
  std::uint32_t seen = 0;
  return wait_at_least(ctl, p, target, timeout_ns, site, spun, seen);
}

}  // namespace flashmoe::detail
