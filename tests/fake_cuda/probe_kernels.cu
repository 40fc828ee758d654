// Kernels whose resources are known by construction, for the test of the fake runtime's reading
// of the cubins (tests/fake_cuda/fatbin.h; FakeCuda.KernelResourcesAreTheMachineCodes). Never
// launched on a GPU: only their registration and machine code are used.
#include "probe_kernels.h"

namespace {

// 4000 bytes of static shared memory, blocks of at most 384 threads.
__global__ void __launch_bounds__(kProbeBound) probe_bounded_kernel(float *x) {
  __shared__ float s[kProbeStaticFloats];
  for (int i = threadIdx.x; i < kProbeStaticFloats; i += blockDim.x) s[i] = x[i];
  __syncthreads();
  x[threadIdx.x] = s[(threadIdx.x * 7) % kProbeStaticFloats];
}

// No launch bounds, no static shared memory.
__global__ void probe_plain_kernel(float *x) { x[threadIdx.x] += 1.0f; }

// No launch bounds, and more than 64 registers a thread (kProbeLive loads live at once: ptxas
// sm_80 and sm_90 give 102-104): blocks of 1024 threads do not fit its registers.
__global__ void probe_registers_kernel(float *x) {
  float a[kProbeLive];
#pragma unroll
  for (int i = 0; i < kProbeLive; ++i) a[i] = x[i * 1024 + threadIdx.x];
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < kProbeLive; ++i) s += a[i] * a[kProbeLive - 1 - i];
  x[threadIdx.x] = s;
}

// A local array of kProbeLocalFloats written and read at indices known only at run time: local
// memory, a stack frame of exactly its bytes (ptxas sm_80 and sm_90).
__global__ void probe_local_kernel(float *x, int k, int j) {
  float a[kProbeLocalFloats];
#pragma unroll
  for (int i = 0; i < kProbeLocalFloats; ++i) a[i] = x[i * 1024 + threadIdx.x];
  a[k & (kProbeLocalFloats - 1)] += 1.0f;
  x[threadIdx.x] = a[j & (kProbeLocalFloats - 1)];
}

}  // namespace

const void *probe_bounded() { return reinterpret_cast<const void *>(probe_bounded_kernel); }
const void *probe_plain() { return reinterpret_cast<const void *>(probe_plain_kernel); }
const void *probe_registers() { return reinterpret_cast<const void *>(probe_registers_kernel); }
const void *probe_local() { return reinterpret_cast<const void *>(probe_local_kernel); }
