// A race-free kernel with the block structure of the warp-specialised prefill kernel, for
// checking compute-sanitizer's racecheck against it: 384 threads claim tickets in a loop of
// __syncthreads (thread 0 writes the shared ticket between two of them, everyone reads it after
// the second), and threads 0-255 synchronise among themselves on the named barrier 1 inside
// the loop, as the routing tickets do. Every shared read below is ordered after its write by a
// barrier all 384 threads pass, so any hazard racecheck reports here is the tool's. With
// compute-sanitizer 2026.x (CUDA 13.0) on an H200 it reports the same class of RAW hazard as on
// moe_ws_kernel: a write by thread 0, a read by a thread of warps 8-11, across __syncthreads
// (bench/NOTES.md, session 10).
//
// Build and run (sm_90a):
//   nvcc -gencode arch=compute_90a,code=sm_90a -lineinfo -o racecheck_model
//   tools/racecheck_model.cu compute-sanitizer --tool racecheck --racecheck-report all
//   ./racecheck_model
#include <cuda_runtime.h>

#include <cstdio>

__global__ void __launch_bounds__(384, 1) ticket_loop(unsigned* counters, int split_registers) {
  __shared__ unsigned s_ticket;
  __shared__ bool s_flag;
  for (int round = 0;; ++round) {
    __syncthreads();
    if (threadIdx.x == 0) s_ticket = round < 3 ? atomicAdd(counters, 1u) : 0xffffffffu;
    __syncthreads();
    const unsigned ticket = s_ticket;
    if (ticket == 0xffffffffu) break;
    if (threadIdx.x < 256) {
      if (threadIdx.x == 0) s_flag = (ticket & 1u) != 0;
      asm volatile("bar.sync 1, 256;" ::: "memory");
      if (s_flag) counters[8 + threadIdx.x] += 1;
      asm volatile("bar.sync 1, 256;" ::: "memory");
    }
  }
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if (split_registers != 0) {  // the producer / consumer register split of the real kernel
    if (threadIdx.x >= 256) {
      asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    } else {
      asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    }
  }
#endif
  __syncthreads();
  if (threadIdx.x == 0) s_flag = counters[0] > 0;
  __syncthreads();
  if (s_flag) counters[1024 + threadIdx.x] = 1;
}

int main() {
  unsigned* counters = nullptr;
  if (cudaMalloc(&counters, 4096 * sizeof(unsigned)) != cudaSuccess) {
    std::printf("no GPU memory: nothing run\n");
    return 1;
  }
  int failures = 0;
  for (int split = 0; split < 2; ++split) {
    (void)cudaMemset(counters, 0, 4096 * sizeof(unsigned));
    ticket_loop<<<4, 384>>>(counters, split);
    const cudaError_t err = cudaDeviceSynchronize();
    std::printf("register split %d: %s\n", split, cudaGetErrorString(err));
    failures += err != cudaSuccess;
  }
  (void)cudaFree(counters);
  return failures == 0 ? 0 : 1;
}
