// The names of the CUDA errors the tests' own runtimes return (tests/fake_cuda/fake_cudart.cpp,
// tests/emu_cuda/emu_cudart.cpp), for their cudaGetErrorName and cudaGetErrorString.
#ifndef SPECNORM_TESTS_CUDA_ERROR_NAMES_H
#define SPECNORM_TESTS_CUDA_ERROR_NAMES_H

#include <cuda_runtime_api.h>

inline const char *test_cuda_error_name(cudaError_t e) {
  switch (e) {
#define SN_NAME(x) \
  case x: return #x;
    SN_NAME(cudaSuccess)
    SN_NAME(cudaErrorInvalidValue)
    SN_NAME(cudaErrorMemoryAllocation)
    SN_NAME(cudaErrorInvalidConfiguration)
    SN_NAME(cudaErrorInvalidDevice)
    SN_NAME(cudaErrorInsufficientDriver)
    SN_NAME(cudaErrorNoDevice)
    SN_NAME(cudaErrorLaunchOutOfResources)
    SN_NAME(cudaErrorLaunchFailure)
    SN_NAME(cudaErrorCooperativeLaunchTooLarge)
    SN_NAME(cudaErrorInvalidClusterSize)
    SN_NAME(cudaErrorInvalidDeviceFunction)
    SN_NAME(cudaErrorInvalidMemcpyDirection)
    SN_NAME(cudaErrorStreamCaptureUnsupported)
    SN_NAME(cudaErrorStreamCaptureImplicit)
    SN_NAME(cudaErrorStreamCaptureInvalidated)
    SN_NAME(cudaErrorIllegalState)
    SN_NAME(cudaErrorNotSupported)
#undef SN_NAME
    default: return "cudaErrorUnknown";
  }
}

#endif
