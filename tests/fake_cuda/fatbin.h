// What the fake CUDA runtime knows of each kernel's machine code: read from the fat binaries that
// nvcc's host stubs register (tests/fake_cuda/fatbin.cpp). Each cubin in a fat binary is an ELF
// file whose sections say, per kernel, what ptxas reports with -Xptxas -v and what
// cudaFuncGetAttributes returns on a GPU: registers a thread, static shared memory, and the
// block size of its __launch_bounds__. The layout read here is the one of the CUDA 12-13 toolkits
// (not a documented interface): tests/test_fake_cuda.cpp checks it on kernels of its own whose
// resources are known by construction, so that a toolkit that changes it fails there first.
#ifndef SPECNORM_FAKE_CUDA_FATBIN_H
#define SPECNORM_FAKE_CUDA_FATBIN_H

#include <cstddef>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace fake_cuda {

struct KernelCode {
  int regs = 0;              // registers a thread
  size_t static_smem = 0;    // bytes of static shared memory (as ptxas -v reports them)
  int max_threads = 0;       // the __launch_bounds__ block size; 0: none given
  int arch = 0;              // of its cubin: 80 for sm_80, ...
  int frame = 0;             // bytes of local memory a thread: its stack frame (spills, local arrays)
};

// A fat binary's cubins: arch (80 for sm_80, 90 for sm_90, ...) -> mangled kernel name -> code.
struct FatbinCode {
  std::map<int, std::map<std::string, KernelCode>> by_arch;
  std::vector<std::string> problems;  // what could not be read (a compressed cubin, a bad header)
};

// Reads the fat binary that `wrapper` (the __fatBinC_Wrapper_t nvcc passes to
// __cudaRegisterFatBinary) points to, and adds what it finds to `out`.
void read_fatbin(const void *wrapper, FatbinCode *out);
// The same for a fat binary image (its header first) of at most `avail` bytes; returns its size
// (0: not a fat binary).
size_t read_fatbin_image(const void *image, size_t avail, FatbinCode *out);

// The fat binary images of an ELF executable's .nv_fatbin section (the library's kernels and a
// test's own), read from its file (e.g. /proc/self/exe): a copy of the section, 8-byte aligned,
// and each image's offset and size in it. False, with why, when the file has none.
struct FatbinImages {
  std::vector<unsigned long long> section;
  std::vector<std::pair<size_t, size_t>> images;
  const void *image(size_t i) const { return reinterpret_cast<const char *>(section.data()) + images[i].first; }
};
bool executable_fatbins(const char *path, FatbinImages *out, std::string *why);

// The cubin a device of compute capability major.minor runs: the one of its major version with the
// highest minor version up to its own; null when there is none (the driver would compile PTX).
const std::map<std::string, KernelCode> *cubin_for(const FatbinCode &code, int major, int minor);

// The largest block the driver launches code `k` with: its launch bounds, and its registers
// (given a warp in units of 256, out of the 16,384 of each of an SM's 4 sub-partitions).
int max_threads(const KernelCode &k);

}  // namespace fake_cuda

#endif
