/* Versions, status strings and the per-thread message of the last failure. */
#include <stdarg.h>
#include <stdio.h>

#include <cuda_runtime_api.h>

#include "sn_internal.h"

SN_API int sn_version_number(void) { return SN_VERSION_NUMBER; }
SN_API const char *sn_version_string(void) { return SN_VERSION_STRING; }

static const struct {
  const char *name;
  const char *description;
} status_text[SN_STATUS_COUNT] = {
    {"SN_SUCCESS", "success"},
    {"SN_ERROR_NULL_POINTER", "a required pointer argument is NULL"},
    {"SN_ERROR_INVALID_SHAPE", "the shape has 0 or more than 8 dimensions, or a dimension <= 0"},
    {"SN_ERROR_SIZE_OVERFLOW", "the element count or byte size does not fit in 64 bits"},
    {"SN_ERROR_INVALID_DIM", "dim is outside [-ndim, ndim)"},
    {"SN_ERROR_INVALID_VALUE", "a numeric or enum argument is out of range"},
    {"SN_ERROR_NOT_SUPPORTED", "the request is valid but not supported by this build"},
    {"SN_ERROR_INVALID_BACKEND", "unknown backend"},
    {"SN_ERROR_INVALID_DEVICE", "the CUDA device ordinal does not exist"},
    {"SN_ERROR_INVALID_POINTER", "a pointer refers to the wrong kind of memory"},
    {"SN_ERROR_ALLOCATION", "host or device memory allocation failed"},
    {"SN_ERROR_CUDA", "a CUDA runtime call failed"},
    {"SN_ERROR_NO_DEVICE", "a CUDA backend was requested but no usable GPU is present"},
    {"SN_ERROR_INVALID_STATE", "the call is not valid in the layer's current state"},
    {"SN_ERROR_BAD_CHECKPOINT", "the checkpoint is truncated, corrupted or not a specnorm checkpoint"},
    {"SN_ERROR_CHECKPOINT_MISMATCH", "the checkpoint belongs to a layer of another shape, dim or dtype"},
    {"SN_ERROR_CHECKPOINT_VERSION", "the checkpoint was written by a newer format version"},
};

SN_API const char *sn_status_name(sn_status_t status) {
  if ((int)status < 0 || status >= SN_STATUS_COUNT) return "SN_STATUS_UNKNOWN";
  return status_text[status].name;
}

SN_API const char *sn_status_description(sn_status_t status) {
  if ((int)status < 0 || status >= SN_STATUS_COUNT) return "unknown status value";
  return status_text[status].description;
}

static _Thread_local char last_message[512];

SN_API const char *sn_last_error_message(void) { return last_message; }

sn_status_t sn__fail(sn_status_t status, const char *fmt, ...) {
  int n = snprintf(last_message, sizeof last_message, "%s: ", sn_status_name(status));
  if (n < 0 || (size_t)n >= sizeof last_message) return status;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_message + n, sizeof last_message - (size_t)n, fmt, ap);
  va_end(ap);
  return status;
}

sn_status_t sn__cuda_fail(int cuda_error, const char *what) {
  cudaError_t e = (cudaError_t)cuda_error;
  /* Reported here, so not left pending for the caller's own checks (the callers leave it to this). */
  (void)cudaGetLastError();
  sn_status_t st = SN_ERROR_CUDA;
  if (e == cudaErrorMemoryAllocation) st = SN_ERROR_ALLOCATION;
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) st = SN_ERROR_NO_DEVICE;
  if (e == cudaErrorInvalidDevice) st = SN_ERROR_INVALID_DEVICE;
  return sn__fail(st, "%s failed: CUDA error %d (%s): %s", what, cuda_error, cudaGetErrorName(e),
                  cudaGetErrorString(e));
}
