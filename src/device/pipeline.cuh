// The producer/consumer ring of the warp-specialised tiles (sm_90): per stage a `full` barrier
// (the producer's expected bytes, completed by the copy engine and by cp.async arrivals) and an
// `empty` barrier (one arrival per consumer warp once it no longer reads the stage). Each role
// walks the ring with its own PipeState in registers. Every wait is bounded: past the watchdog
// the launch fails with DeviceTimeout, the ring is poisoned, and every later wait of every role
// returns false at once, so no role arrives on a phase that never completed.
#pragma once

#include <cstdint>

#include "sync.cuh"
#include "tma.cuh"

namespace flashmoe::detail {

// Where a role is in the ring: the stage it uses next and that stage's phase parity.
template <int Stages>
struct PipeState {
  int index = 0;
  std::uint32_t phase = 0;
  __device__ void advance() {
    if (++index == Stages) {
      index = 0;
      phase ^= 1u;
    }
  }
};

__device__ __forceinline__ void mbar_arrive(std::uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// The arrival of this thread's earlier cp.async copies, once they land (no pending count of its
// own: the barrier's arrival count includes it).
__device__ __forceinline__ void cp_async_mbar_arrive(std::uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}

template <int Stages>
struct Pipeline {
  std::uint64_t full[Stages];
  std::uint64_t empty[Stages];
  std::uint32_t poisoned;  // a wait ran past the watchdog: every role stops using the ring

  // One thread, before any role starts (then fence.mbarrier_init and a block barrier).
  // full: the producer's expect_tx arrival plus `gather_arrivals` cp.async arrivals; empty:
  // one arrival per consumer warp.
  __device__ void init(std::uint32_t gather_arrivals, std::uint32_t consumer_warps) {
    for (int s = 0; s < Stages; ++s) {
      mbar_init(smem_u32(&full[s]), 1 + gather_arrivals);
      mbar_init(smem_u32(&empty[s]), consumer_warps);
    }
    poisoned = 0;
    fence_mbarrier_init();
  }

  // Producer: waits until the consumers have released the stage (the first lap passes at once:
  // a fresh barrier counts as having completed the phase before parity 0).
  __device__ bool producer_acquire(const PipeState<Stages>& st, const Watchdog& wd,
                                   ErrorSite site) {
    return wait_barrier(smem_u32(&empty[st.index]), st.phase ^ 1u, wd, site);
  }
  // Producer (one thread): the stage's copy-engine bytes, before the copies are issued.
  __device__ void producer_expect(const PipeState<Stages>& st, std::uint32_t bytes) {
    mbar_expect_tx(smem_u32(&full[st.index]), bytes);
  }
  __device__ std::uint32_t full_barrier(const PipeState<Stages>& st) {
    return smem_u32(&full[st.index]);
  }
  // Consumers: waits until the stage's bytes have landed (and are visible to this thread).
  __device__ bool consumer_wait(const PipeState<Stages>& st, const Watchdog& wd, ErrorSite site) {
    return wait_barrier(smem_u32(&full[st.index]), st.phase, wd, site);
  }
  // Consumers (lane 0 of each warp, after the warp's last read of the stage).
  __device__ void consumer_release(const PipeState<Stages>& st) {
    mbar_arrive(smem_u32(&empty[st.index]));
  }

  __device__ bool is_poisoned() const {
    return *static_cast<const volatile std::uint32_t*>(&poisoned) != 0;
  }
  __device__ void poison() { *static_cast<volatile std::uint32_t*>(&poisoned) = 1; }

  // Any barrier of the block's roles (the stage ring's, or another ring beside it): false once
  // the ring is poisoned or the wait ran past the watchdog (which fails the launch and poisons
  // the ring).
  __device__ bool wait_barrier(std::uint32_t bar, std::uint32_t parity, const Watchdog& wd,
                               ErrorSite site) {
    if (mbar_try_wait(bar, parity)) return true;
    const std::uint64_t start = global_timer_ns();
    for (unsigned polls = 1;; ++polls) {
      if (mbar_try_wait(bar, parity)) return true;
      if (polls % 64 == 0) {
        if (is_poisoned()) return false;
        if (global_timer_ns() - start > wd.timeout_ns) {
          wd.ctl.fail(StatusCode::DeviceTimeout, site);
          poison();
          return false;
        }
      }
    }
  }
};

}  // namespace flashmoe::detail
