// <cuda_pipeline.h>'s asynchronous copies for the emulated build (emu.h): done at once.
#ifndef SPECNORM_EMU_CUDA_PIPELINE_H
#define SPECNORM_EMU_CUDA_PIPELINE_H

#include <cstddef>
#include <cstring>

inline void __pipeline_memcpy_async(void *dst, const void *src, size_t bytes, size_t zfill = 0) {
  std::memcpy(dst, src, bytes - zfill);
  if (zfill) std::memset(static_cast<char *>(dst) + (bytes - zfill), 0, zfill);
}
inline void __pipeline_commit() {}
inline void __pipeline_wait_prior(size_t) {}

#endif
