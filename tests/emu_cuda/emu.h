// The device side of the CUDA emulator (tests/emu_cuda/): the library's kernels compiled as C++
// for the host (emu_prelude.h) run here, each CUDA thread a fiber, so that their results can be
// checked against the CPU reference on a machine without a GPU.
//
// How a launch runs (emu_device.cpp):
//   - the threads of a block are fibers on one OS thread; a fiber runs until it waits (a block
//     barrier, a warp shuffle, a grid or cluster barrier) or ends, then the next one runs: a
//     schedule as unfavourable to missing barriers as any the hardware may pick;
//   - blocks run one after the other on the calling thread, except in cooperative launches (every
//     block at once, one OS thread each: grid barriers) and cluster launches (a cluster's blocks at
//     once: cluster barriers and distributed shared memory);
//   - __shared__ variables are thread_local (one copy per OS thread: per block running at once);
//     the dynamic shared memory is filled with 0xff (NaN as floats) before each block;
//   - a block whose threads all wait and none can go on (a barrier some thread never reaches) is
//     a deadlock: the launch stops and reports it (emu::last_fault()).
// Not modelled: timing, memory ordering weaker than the host's, the hardware's limits on
// registers (the occupancy is computed from threads and shared memory only).
#ifndef SPECNORM_EMU_H
#define SPECNORM_EMU_H

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

// The running fiber's CUDA thread and block indices and the launch's shape, as the kernels read
// them (set by the scheduler each time it switches fibers).
extern thread_local uint3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;

namespace emu {

// The CUDA thread a fiber runs (its block's indices and the launch's shape: blockIdx, blockDim,
// gridDim above).
struct ThreadCtx {
  uint3 thread_idx;
  unsigned linear;  // thread_idx as one index
};

// The attributes of a launch the emulator models: a cooperative launch, thread-block clusters
// (1 × 1 × 1 without the attribute).
struct LaunchAttrs {
  bool cooperative = false;
  dim3 cluster{1, 1, 1};
};
inline LaunchAttrs launch_attrs(const cudaLaunchConfig_t &cfg) {
  LaunchAttrs a;
  for (unsigned i = 0; i < cfg.numAttrs; ++i) {
    if (cfg.attrs[i].id == cudaLaunchAttributeCooperative) a.cooperative = cfg.attrs[i].val.cooperative != 0;
    if (cfg.attrs[i].id == cudaLaunchAttributeClusterDimension) {
      a.cluster.x = cfg.attrs[i].val.clusterDim.x;
      a.cluster.y = cfg.attrs[i].val.clusterDim.y;
      a.cluster.z = cfg.attrs[i].val.clusterDim.z;
    }
  }
  return a;
}

// The fiber running on this OS thread (null outside a kernel).
extern thread_local ThreadCtx *t_current;
inline ThreadCtx *current() { return t_current; }

// Runs `body` once for every thread of the launch `cfg` describes (grid, block, dynamic shared
// memory, cooperative and cluster attributes) and returns what the launch returns: an error for a
// configuration the device refuses, or cudaErrorLaunchFailure after a deadlock or a trap.
cudaError_t run(const cudaLaunchConfig_t &cfg, const std::function<void()> &body, const char *name);

// The static __shared__ variables of the program (offset from tls_anchor, bytes): each block
// starts with them filled with 0xff, as the dynamic shared memory.
extern thread_local char tls_anchor;
const std::vector<std::pair<long, size_t>> &static_shared();

// What stopped the last failed launch ("" after a good one).
std::string last_fault();

// Device-side operations, for the calling fiber.
void syncthreads();
void syncwarp(unsigned mask);
uint64_t exchange(unsigned mask, uint64_t value, int src_lane);  // a shuffle's 8-byte slot
void grid_sync();
void cluster_arrive();
void cluster_wait();
unsigned cluster_rank();
unsigned cluster_blocks();
void *cluster_peer(const void *p, unsigned rank);  // p in this block's shared memory, in block rank's
void *dynamic_shared();
[[noreturn]] void trap();

// What a launch goes through (emu_cudart.cpp): checked as the runtime would, then run, or recorded
// in the stream's capture. `name`: null for the kernel's own (from the program's symbols).
cudaError_t submit(const cudaLaunchConfig_t *cfg, const void *kernel, std::function<void()> body,
                   const char *name);

// The launch of `kernel` with these arguments (what cudaLaunchKernelEx becomes).
template <class... P, class... A>
cudaError_t launch(const cudaLaunchConfig_t *cfg, void (*kernel)(P...), A &&...args) {
  auto params = std::make_shared<std::tuple<std::decay_t<P>...>>(std::forward<A>(args)...);
  return submit(cfg, reinterpret_cast<const void *>(kernel), [kernel, params] { std::apply(kernel, *params); }, nullptr);
}

}  // namespace emu

#endif
