// The CUDA emulator's own tests: what README ("Validation") says it finds, it finds. Compiled with
// emu_prelude.h like the library's kernels, so the kernels here are written as CUDA.
#include <cooperative_groups.h>
#include <cuda_pipeline.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "sn_device.cuh"

namespace {

template <class T>
struct Dev {  // device memory of n T
  T *p = nullptr;
  size_t n;
  explicit Dev(size_t n_) : n(n_) { EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess); }
  ~Dev() { cudaFree(p); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
};

// kernel<<<grid, block, smem>>>(args...), cooperative or in clusters of `cluster` blocks (0: none),
// through the library's own launch configuration.
template <class... P, class... A>
cudaError_t launch(void (*k)(P...), unsigned grid, unsigned block, size_t smem, bool coop, unsigned cluster,
                   A... args) {
  sn::ClusterLaunch L((int)grid, (int)block, smem, (int)cluster, nullptr, false, coop);
  return cudaLaunchKernelEx(&L.cfg, k, args...);
}

// Each thread's sum over its warp by shuffles, and the block's sum through shared memory.
__global__ void sums_kernel(float *warp_out, float *block_out) {
  __shared__ float part[32];
  float x = (float)(blockIdx.x * blockDim.x + threadIdx.x);
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  warp_out[blockIdx.x * blockDim.x + threadIdx.x] = x;
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = x;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) s += part[w];
    block_out[blockIdx.x] = s;
  }
}

TEST(Emulator, ShufflesAndBarriersGiveTheSums) {
  Dev<float> w(3 * 128), b(3);
  ASSERT_EQ(launch(sums_kernel, 3, 128, 0, false, 0, w.p, b.p), cudaSuccess) << emu::last_fault();
  const std::vector<float> wv = w.get(), bv = b.get();
  for (int i = 0; i < 3 * 128; ++i) {
    const int first = i / 32 * 32;
    EXPECT_EQ(wv[i], 32.f * first + 496.f) << i;  // first + ... + first + 31
  }
  for (int k = 0; k < 3; ++k) EXPECT_EQ(bv[k], 128.f * 128 * k + 128.f * 127 / 2) << k;
}

// Lane 0 waits at the block barrier while the rest of its warp waits for it in a shuffle. (A
// barrier reached from two places still completes, as on the hardware, whose barrier counts
// threads, not places.)
__global__ void divergent_barrier_kernel(float *out) {
  float x = 1.f;
  if (threadIdx.x == 0)
    __syncthreads();
  else
    x = __shfl_xor_sync(0xffffffffu, x, 1);
  out[threadIdx.x] = x;
}

TEST(Emulator, AWaitNoThreadCanEndIsADeadlock) {
  Dev<float> out(64);
  EXPECT_EQ(launch(divergent_barrier_kernel, 1, 64, 0, false, 0, out.p), cudaErrorLaunchFailure);
  EXPECT_NE(emu::last_fault().find("deadlock"), std::string::npos) << emu::last_fault();
}

// Warp 1 reads what warp 0 wrote to shared memory, with the barrier between or without it.
__global__ void cross_warp_kernel(float *out, bool barrier) {
  SN_EXTERN_SHARED(float, sm);
  if (threadIdx.x < 32) sm[threadIdx.x] = 2.f;
  if (barrier) __syncthreads();
  if (threadIdx.x >= 32) out[blockIdx.x * 32 + threadIdx.x - 32] = sm[threadIdx.x - 32];
}

TEST(Emulator, AMissingBarrierReadsNaN) {
  Dev<float> out(64);
  ASSERT_EQ(launch(cross_warp_kernel, 2, 64, 32 * sizeof(float), false, 0, out.p, false), cudaSuccess);
  const std::vector<float> v = out.get();
  for (int i = 32; i < 64; ++i) EXPECT_TRUE(std::isnan(v[i])) << i;  // block 1 ran warp 1 first
  ASSERT_EQ(launch(cross_warp_kernel, 2, 64, 32 * sizeof(float), false, 0, out.p, true), cudaSuccess);
  for (float x : out.get()) EXPECT_EQ(x, 2.f);
}

// Static shared memory written in block 0 only: block 1 reads NaN, not block 0's value.
__global__ void static_shared_kernel(float *out) {
  __shared__ float s;
  if (blockIdx.x == 0 && threadIdx.x == 0) s = 5.f;
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}

TEST(Emulator, StaticSharedMemoryStartsAsNaN) {
  Dev<float> out(2);
  for (int k = 0; k < 2; ++k) {  // blocks in either order
    ASSERT_EQ(launch(static_shared_kernel, 2, 32, 0, false, 0, out.p), cudaSuccess);
    const std::vector<float> v = out.get();
    EXPECT_EQ(v[0], 5.f);
    EXPECT_TRUE(std::isnan(v[1])) << v[1];
  }
}

TEST(Emulator, FreshDeviceMemoryIsNaN) {
  Dev<float> m(5);
  for (float x : m.get()) EXPECT_TRUE(std::isnan(x));
}

// Every block adds its index to a counter, a grid barrier, then every block reads the total.
__global__ void grid_kernel(unsigned *counter, unsigned *seen) {
  if (threadIdx.x == 0) atomicAdd(counter, blockIdx.x);
  cooperative_groups::this_grid().sync();
  if (threadIdx.x == 0) seen[blockIdx.x] = *counter;
}

TEST(Emulator, GridBarrierOfACooperativeLaunch) {
  Dev<unsigned> counter(1), seen(6);
  ASSERT_EQ(cudaMemset(counter.p, 0, sizeof(unsigned)), cudaSuccess);
  ASSERT_EQ(launch(grid_kernel, 6, 64, 0, true, 0, counter.p, seen.p), cudaSuccess) << emu::last_fault();
  for (unsigned x : seen.get()) EXPECT_EQ(x, 15u);
  // Not cooperative: the grid barrier is refused, not a hang.
  EXPECT_EQ(launch(grid_kernel, 6, 64, 0, false, 0, counter.p, seen.p), cudaErrorLaunchFailure);
  // More blocks than can be resident at once: refused as the runtime does.
  EXPECT_EQ(launch(grid_kernel, 100000, 64, 0, true, 0, counter.p, seen.p), cudaErrorCooperativeLaunchTooLarge);
}

// Block 0's thread 0 ends at once; the others meet at a grid barrier it never reaches (the
// hardware hangs where thread 0 of a block is missing; cooperative groups asks for every thread).
__global__ void early_exit_kernel(unsigned *out) {
  if (blockIdx.x == 0 && threadIdx.x == 0) return;
  cooperative_groups::this_grid().sync();
  out[blockIdx.x] = 1;
}

TEST(Emulator, AGridBarrierAnEndedThreadNeverReachesFails) {
  Dev<unsigned> out(4);
  EXPECT_EQ(launch(early_exit_kernel, 4, 64, 0, true, 0, out.p), cudaErrorLaunchFailure);
  EXPECT_NE(emu::last_fault().find("ended"), std::string::npos) << emu::last_fault();
}

// Block 0 reads what block 1 writes in the same launch, with nothing that orders them: one of two
// launches runs block 0 first and reads memory not yet written.
__global__ void block_order_kernel(float *data, float *seen) {
  if (threadIdx.x != 0) return;
  if (blockIdx.x == 1) data[0] = 3.f;
  if (blockIdx.x == 0) *seen = data[0];
}

TEST(Emulator, BlocksRunInEitherOrder) {
  Dev<float> data(1), seen(1);
  bool unwritten = false, written = false;
  for (int k = 0; k < 2; ++k) {
    ASSERT_EQ(cudaMemset(data.p, 0xff, sizeof(float)), cudaSuccess);
    ASSERT_EQ(launch(block_order_kernel, 2, 32, 0, false, 0, data.p, seen.p), cudaSuccess);
    const float x = seen.get()[0];
    unwritten = unwritten || std::isnan(x);
    written = written || x == 3.f;
  }
  EXPECT_TRUE(unwritten && written);
}

// cp.async (through cuda_pipeline.h) from an address off its size's alignment.
__global__ void misaligned_copy_kernel(const float *src, int offset) {
  SN_EXTERN_SHARED(float4, sm);
  __pipeline_memcpy_async(&sm[0], src + offset, 16);
  __pipeline_commit();
  __pipeline_wait_prior(0);
}

TEST(Emulator, MisalignedAsyncCopyTraps) {
  Dev<float> src(8);
  EXPECT_EQ(launch(misaligned_copy_kernel, 1, 32, 16, false, 0, src.p, 0), cudaSuccess) << emu::last_fault();
  EXPECT_EQ(launch(misaligned_copy_kernel, 1, 32, 16, false, 0, src.p, 1), cudaErrorLaunchFailure);
  EXPECT_NE(emu::last_fault().find("__trap"), std::string::npos) << emu::last_fault();
}

// A float4 load off 16-byte alignment: UBSan's alignment check ends the process, as the device
// would end the context.
__global__ void misaligned_load_kernel(const float *src, float *out) {
  *out = reinterpret_cast<const float4 *>(src + 1)->x;
}

TEST(EmulatorDeathTest, MisalignedVectorLoadStops) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Dev<float> src(8), out(1);
  EXPECT_DEATH((void)launch(misaligned_load_kernel, 1, 1, 0, false, 0, src.p, out.p), "misaligned");
}

// Each block of a cluster of 4 writes its rank into its shared memory; after the cluster barrier,
// each reads its right neighbour's.
__global__ void cluster_kernel(unsigned *out) {
  __shared__ unsigned mine;
  namespace cg = cooperative_groups;
  cg::cluster_group cl = cg::this_cluster();
  if (threadIdx.x == 0) mine = 100 + cl.block_rank();
  cl.sync();
  if (threadIdx.x == 0) out[blockIdx.x] = *cl.map_shared_rank(&mine, (int)((cl.block_rank() + 1) % cl.num_blocks()));
  cl.sync();  // no block ends while a peer may still read its shared memory
}

TEST(Emulator, ClusterPeersSharedMemory) {
  Dev<unsigned> out(8);
  ASSERT_EQ(launch(cluster_kernel, 8, 32, 0, false, 4, out.p), cudaSuccess) << emu::last_fault();
  const std::vector<unsigned> v = out.get();
  for (unsigned b = 0; b < 8; ++b) EXPECT_EQ(v[b], 100 + (b % 4 + 1) % 4) << b;
  EXPECT_EQ(launch(cluster_kernel, 6, 32, 0, false, 4, out.p), cudaErrorInvalidClusterSize);
}

TEST(Emulator, LaunchesTheRuntimeRefuses) {
  Dev<float> w(1), b(1);
  EXPECT_EQ(launch(sums_kernel, 1, 2048, 0, false, 0, w.p, b.p), cudaErrorInvalidConfiguration);
  // Dynamic shared memory past 48 KB without cudaFuncSetAttribute.
  EXPECT_EQ(launch(cross_warp_kernel, 1, 64, 64 * 1024, false, 0, w.p, true), cudaErrorInvalidValue);
  ASSERT_EQ(cudaFuncSetAttribute(cross_warp_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024),
            cudaSuccess);
  Dev<float> out(32);
  EXPECT_EQ(launch(cross_warp_kernel, 1, 64, 64 * 1024, false, 0, out.p, true), cudaSuccess);
}

}  // namespace
