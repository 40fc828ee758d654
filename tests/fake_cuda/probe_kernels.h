// The kernels of tests/fake_cuda/probe_kernels.cu, as the host pointers the runtime knows them by.
#ifndef SPECNORM_FAKE_CUDA_PROBE_KERNELS_H
#define SPECNORM_FAKE_CUDA_PROBE_KERNELS_H

constexpr int kProbeStaticFloats = 1000;  // probe_bounded's static shared memory, in floats
constexpr int kProbeBound = 384;          // and its __launch_bounds__
constexpr int kProbeLive = 96;            // probe_registers' values live at once (it reads
                                          // kProbeLive × 1024 floats)
constexpr int kProbeLocalFloats = 64;     // probe_local's local array (a power of 2)

const void *probe_bounded();
const void *probe_plain();
const void *probe_registers();
const void *probe_local();

#endif
