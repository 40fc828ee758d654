// A CUDA runtime of our own for the tests of the library's host code on machines without a GPU
// (tests/fake_cuda/fake_cudart.cpp). The library's objects, kernels' host stubs included, are
// linked against it in place of libcudart: kernels do not run. What it gives the tests:
//   - every launch checked against the (fake) device's limits, as the driver would, and against
//     what the runtime told the library (occupancy, the opt-in shared memory it set); a launch the
//     library should not have made is a violation (violations());
//   - device memory the host cannot touch (mapped without access: a host read or write of it
//     faults), with bounds: copies and memsets outside a live allocation are violations; pointer
//     attributes that tell device, pinned host, managed, plain host and freed memory apart;
//   - copies of cudaMemcpyAsync done when their stream is synchronized, not before: a result read
//     without synchronizing is not there yet (from pageable host memory the bytes are staged when
//     the call returns, as CUDA documents); the test's stream is non-blocking (the legacy stream's
//     synchronous calls do not wait for it);
//   - the legacy stream's cudaMemset and cudaMemcpy from pageable memory (or device to device)
//     possibly still running when they return, as CUDA documents: a launch or asynchronous copy on
//     another stream before a synchronization that waits for them is a violation;
//   - streams: every launch, asynchronous copy and synchronization may be required to use one
//     stream (expect_stream); a capture is on one stream, during which the driver's refusals
//     (synchronizing, the legacy stream, allocating outside the relaxed mode) are violations;
//   - counts of allocations, frees, host synchronizations, copies and launches;
//   - failure injection: the n-th runtime call from now fails;
//   - the current device, per thread, on a fake machine of one or more devices;
//   - an "MPS" limit on the SMs blocks may be resident on.
//   - each kernel's registers, static shared memory and launch bounds read from its machine code
//     for the device (the build's cubins, fatbin.h), in cudaFuncGetAttributes, in the occupancy
//     (the toolkit's calculator, cuda_occupancy.h) and in the launch checks: a block larger than
//     the kernel's code allows, or dynamic shared memory past the opt-in less the static, fails.
// Kernels do not run, so the tests check statuses, state kept or restored, launch shapes and
// counts, not values computed on the device. Not modelled: PTX compiled by the driver (a device
// needs the build's machine code), events, more than one thread using the fake at once for
// captures and failures.
#ifndef SPECNORM_FAKE_CUDA_H
#define SPECNORM_FAKE_CUDA_H

#include <cuda_runtime.h>

#include "fatbin.h"

#include <cstdint>
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
DeviceProps a40();  // sm_86: runs the sm_80 code with 99 KB of shared memory a block

// A stream handle for the tests: the fake never dereferences one.
inline cudaStream_t test_stream() { return reinterpret_cast<cudaStream_t>(uintptr_t{0x5eed00}); }

struct Launch {
  std::string kernel;  // demangled name
  int device;
  cudaStream_t stream;
  dim3 grid, block;
  size_t smem;
  unsigned cluster;  // blocks per cluster, 0: none
  bool cooperative, pdl, captured;
  cudaError_t error = cudaSuccess;  // what the launch returned (refused: it did not run)
};

struct Counters {
  long mallocs = 0, frees = 0, syncs = 0, launches = 0, calls = 0;
  long memcpys = 0;  // to or from the host, synchronous or not
  long d2d = 0;      // device to device (asynchronous: allowed in a step and a capture)
  long memsets = 0;
};

// Every API the injection counts (registration, cudaGetLastError and the error strings are not).
enum class Api {
  kAny, kMalloc, kFree, kMemcpy, kMemcpyAsync, kMemset, kLaunch, kStreamSync, kGetDevice,
  kSetDevice, kGetDeviceCount, kDeviceGetAttribute, kFuncGetAttributes, kFuncSetAttribute,
  kOccupancy, kPointerAttributes, kStreamIsCapturing, kCaptureMode
};

// A fresh machine of `props` (one device each); forgets the log, counters, failures, capture,
// expected stream, copies not yet done and the functions' attributes; the calling thread's
// current device, last error and capture mode (other threads keep theirs). Memory still live
// stays live (and counted).
void reset(const std::vector<DeviceProps> &props);
// cudaGetDeviceCount fails with this error (cudaErrorInsufficientDriver: a machine without a GPU);
// cudaSuccess to undo.
void set_device_count_error(cudaError_t e);

// The n-th (1-based) call of `api` from now returns `error` (and sets it as the last error);
// n = 0 clears. One armed failure at a time. A launch's own errors (out of resources, cooperative
// launch too large, invalid configuration) are returned by launches only; any other call gets
// cudaErrorInvalidValue instead.
void fail_nth(Api api, long n, cudaError_t error);
// Makes `e` the calling thread's last error, as a failed call of the caller's own code would.
void raise(cudaError_t e);
// Copies to the host queued and not yet done (a blocking call must not return with any: it would
// leave them writing into host memory after it returned), and forgetting them all.
long pending_to_host();
void drop_pending();
// Whether the armed failure has fired.
bool failure_fired();
// The runtime function whose call was failed ("" before).
std::string failed_call();

// From now on every launch, asynchronous copy, stream synchronization and capture query must be
// on `stream`, and no synchronous call (cudaMemcpy, cudaMemset, cudaDeviceSynchronize: the legacy
// stream) may be made while `stream` is not the legacy one (violations otherwise);
// expect_any_stream() lifts it, for calls that take no stream.
void expect_stream(cudaStream_t stream);
void expect_any_stream();

// A capture on `stream` while on: cudaStreamIsCapturing reports it there (and only there), its
// launches are recorded as captured, and what the driver refuses during a capture is a violation.
void set_capturing(bool on, cudaStream_t stream = test_stream());
// Whether a capture is on and a launch on its stream, or a call the driver refuses during it,
// failed since set_capturing(true) (the driver then invalidates the capture: the library must
// have failed the call).
bool capture_invalidated();
// Blocks resident per SM are computed over this many SMs (as under MPS); 0: all of them.
void set_active_sms(int sms);

// A registered kernel's machine code for one architecture (fatbin.h), as the fake uses it.
struct KernelInfo {
  std::string name, mangled;
  KernelCode code;  // code.arch: 80 for sm_80, ...
};
// Every registered kernel's, for every architecture the build has code for; and what could not
// be read of the fat binaries (empty when all was).
std::vector<KernelInfo> kernel_codes();
std::vector<std::string> fatbin_problems();
// Whether the build has machine code for device `d` (its kernels can be launched on it).
bool has_code_for(const DeviceProps &d);

Counters counters();
std::vector<Launch> launches();  // since reset or clear_log
std::vector<std::string> violations();  // since reset
void clear_log();  // the launches (not the violations)
// Allocations not freed (a cudaFree failed by injection abandons its allocation: not counted).
long live_allocations();
size_t live_bytes();

}  // namespace fake_cuda

#endif
