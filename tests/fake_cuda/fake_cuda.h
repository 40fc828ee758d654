// A CUDA runtime of our own for the tests of the library's host code on machines without a GPU
// (tests/fake_cuda/fake_cudart.cpp). The library's objects, kernels' host stubs included, are
// linked against it in place of libcudart: "device" memory is host memory, kernels do not run.
// What it gives the tests:
//   - every launch checked against the (fake) device's limits, as the driver would, and against
//     what the runtime told the library (occupancy, the opt-in shared memory it set); a launch the
//     library should not have made is a violation (violations());
//   - device memory with bounds: copies and memsets outside a live allocation are violations;
//     pointer attributes that tell device, host and freed memory apart; a count of what is live;
//   - counts of allocations, frees, host synchronizations and launches, to check the per-step path;
//   - failure injection: the n-th runtime call from now fails;
//   - the current device, per thread, on a fake machine of one or more devices;
//   - stream capture as a flag (cudaStreamIsCapturing), and an "MPS" limit on the resident blocks.
// Kernels do not run, so the tests check statuses, state kept or restored, launch shapes and counts,
// not values.
#ifndef SPECNORM_FAKE_CUDA_H
#define SPECNORM_FAKE_CUDA_H

#include <cuda_runtime.h>

#include <string>
#include <vector>

namespace fake_cuda {

struct DeviceProps {
  int major = 9, minor = 0;
  int sms = 132;
  int optin_smem = 232448;      // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int smem_per_sm = 233472;     // cudaDevAttrMaxSharedMemoryPerMultiprocessor
  int l2_bytes = 50 * 1024 * 1024;
  int cooperative = 1;
};
DeviceProps h100();
DeviceProps a100();

struct Launch {
  std::string kernel;  // demangled name
  int device;
  dim3 grid, block;
  size_t smem;
  unsigned cluster;  // blocks per cluster, 0: none
  bool cooperative, pdl, captured;
};

struct Counters {
  long mallocs = 0, frees = 0, syncs = 0, launches = 0, memcpys = 0, memsets = 0, calls = 0;
};

// Every API the injection counts (registration, cudaGetLastError and the error strings are not).
enum class Api {
  kAny, kMalloc, kFree, kMemcpy, kMemcpyAsync, kMemset, kLaunch, kStreamSync, kGetDevice,
  kSetDevice, kGetDeviceCount, kDeviceGetAttribute, kFuncGetAttributes, kFuncSetAttribute,
  kOccupancy, kPointerAttributes, kStreamIsCapturing, kCaptureMode
};

// A fresh machine of `props` (one device each); forgets the log, counters, failures, capture and
// the functions' attributes. Memory still live stays live (and counted).
void reset(const std::vector<DeviceProps> &props);
// cudaGetDeviceCount fails with this error (cudaErrorInsufficientDriver: a machine without a GPU);
// cudaSuccess to undo.
void set_device_count_error(cudaError_t e);

// The n-th (1-based) call of `api` from now returns `error` (and sets it as the last error);
// n = 0 clears. One armed failure at a time.
void fail_nth(Api api, long n, cudaError_t error);
// Whether the armed failure has fired.
bool failure_fired();
// The runtime function whose call was failed ("" before).
std::string failed_call();

// cudaStreamIsCapturing reports an active capture on every stream while on.
void set_capturing(bool on);
// Blocks resident per SM are computed over this many SMs (as under MPS); 0: all of them.
void set_active_sms(int sms);

Counters counters();
std::vector<Launch> launches();  // since reset
std::vector<std::string> violations();
void clear_log();  // launches and violations
// Allocations not freed (a cudaFree failed by injection abandons its allocation: not counted).
long live_allocations();
size_t live_bytes();

}  // namespace fake_cuda

#endif
