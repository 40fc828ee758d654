// <cuda_pipeline.h>'s asynchronous copies for the emulated build (emu.h): done at once.
#ifndef SPECNORM_EMU_CUDA_PIPELINE_H
#define SPECNORM_EMU_CUDA_PIPELINE_H

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "../emu.h"

inline void __pipeline_memcpy_async(void *dst, const void *src, size_t bytes, size_t zfill = 0) {
  // cp.async takes 4, 8 or 16 bytes from and to addresses aligned to that size (else the launch
  // faults on the device).
  const uintptr_t a = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src);
  if ((bytes != 4 && bytes != 8 && bytes != 16) || (a & (bytes - 1)) != 0 || zfill > bytes) emu::trap();
  std::memcpy(dst, src, bytes - zfill);
  if (zfill) std::memset(static_cast<char *>(dst) + (bytes - zfill), 0, zfill);
}
inline void __pipeline_commit() {}
inline void __pipeline_wait_prior(size_t) {}

#endif
