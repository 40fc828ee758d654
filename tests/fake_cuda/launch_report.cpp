// Which kernels a layer launches on an H100 or an A100, without a GPU: the library's objects
// against the fake CUDA runtime, whose occupancy is the build's own machine code's (fatbin.h).
// For the predictions of a GPU run (bench/NOTES.md): the kernel, grid, block, dynamic shared
// memory, clusters and cooperative launches of each call, after the path the layer records for
// it (sn_layer_get_paths).
//
//   specnorm_launch_report [--device h100|a100] [--tune SPECNORM_TUNE] HxW[:f32|bf16|f16] ...
//   specnorm_launch_report [--device h100|a100] --kernels
//
// e.g. `specnorm_launch_report --tune op_onchip_grid=2 4096x4096:bf16`. Without shapes: the
// benchmark's single layers in fp32 and bf16. The device defaults to h100; the calls are the
// training forward (W_sn written), the scale-only forward, the eval forward and the backward
// (no flags), after a warm-up. --kernels lists every kernel's machine code for the device instead
// (registers, local memory, static shared memory, launch bounds; as ptxas -v reports them, read
// from the build's cubins in no time: scripts/ptxas_report.sh recompiles), and exits 1 if any
// kernel uses local memory (spills or local arrays).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fake_cuda.h"
#include "sn_reference.h"  // sn_dtype_size
#include "specnorm.h"

namespace {

struct Layer {
  int64_t h, w;
  sn_dtype_t dtype;
};

bool parse(const char *arg, Layer *l) {
  long long h = 0, w = 0;
  char dt[8] = "f32";
  const int n = std::sscanf(arg, "%lldx%lld:%7s", &h, &w, dt);
  if (n < 2 || h < 1 || w < 1) return false;
  l->h = h;
  l->w = w;
  if (!std::strcmp(dt, "f32")) l->dtype = SN_DTYPE_FLOAT32;
  else if (!std::strcmp(dt, "bf16")) l->dtype = SN_DTYPE_BFLOAT16;
  else if (!std::strcmp(dt, "f16")) l->dtype = SN_DTYPE_FLOAT16;
  else return false;
  return true;
}

const char *dtype_name(sn_dtype_t d) {
  return d == SN_DTYPE_FLOAT32 ? "f32" : d == SN_DTYPE_BFLOAT16 ? "bf16" : "f16";
}

// The kernel's name without its namespaces, return type and parameters.
std::string short_name(std::string n) {
  for (const char *junk : {"void ", "sn::(anonymous namespace)::", "(anonymous namespace)::", "sn::"})
    for (size_t p; (p = n.find(junk)) != std::string::npos;) n.erase(p, std::strlen(junk));
  const size_t paren = n.rfind('(');
  return paren == std::string::npos ? n : n.substr(0, paren);
}

// One call's launches, after the path the layer recorded for it (sn_layer_get_paths: `kind`).
void report(const char *call, sn_status_t st, const sn_layer_t *layer, sn_path_t sn_paths_t::*kind) {
  std::printf("  %-9s", call);
  sn_paths_t p;
  if (st != SN_SUCCESS) std::printf(" status %d: %s", (int)st, sn_last_error_message());
  else if (sn_layer_get_paths(layer, &p) == SN_SUCCESS) {
    std::printf(" %s", sn_path_name(p.*kind));
    if (p.dropped) std::printf(" (dropped 0x%x)", p.dropped);
  }
  for (const fake_cuda::Launch &l : fake_cuda::launches()) {
    std::printf("\n      %s  grid %u  block %u  smem %zu", short_name(l.kernel).c_str(), l.grid.x,
                l.block.x, l.smem);
    if (l.cluster) std::printf("  cluster %u", l.cluster);
    if (l.cooperative) std::printf("  cooperative");
  }
  std::printf("\n");
  fake_cuda::clear_log();
}

int run(const Layer &L) {
  const int64_t dims[2] = {L.h, L.w};
  sn_layer_desc_t d;
  if (sn_layer_desc_init(&d, 2, dims) != SN_SUCCESS) return 1;
  d.dtype = L.dtype;
  sn_layer_t *layer = nullptr;
  std::printf("%lld x %lld %s\n", (long long)L.h, (long long)L.w, dtype_name(L.dtype));
  if (sn_layer_create(&layer, &d) != SN_SUCCESS) {
    std::printf("  create: %s\n", sn_last_error_message());
    return 1;
  }
  const size_t bytes = (size_t)(L.h * L.w) * sn_dtype_size(L.dtype);
  void *W = nullptr, *W_sn = nullptr, *G = nullptr, *dW = nullptr;
  int rc = 0;
  if (cudaMalloc(&W, bytes) || cudaMalloc(&W_sn, bytes) || cudaMalloc(&G, bytes) || cudaMalloc(&dW, bytes)) {
    std::printf("  out of (fake) device memory\n");
    rc = 1;
  } else if (sn_layer_warmup(layer, W, nullptr) != SN_SUCCESS) {
    std::printf("  warm-up: %s\n", sn_last_error_message());
    rc = 1;
  } else {
    char text[1024];
    if (sn_layer_describe(layer, text, sizeof text, nullptr) == SN_SUCCESS) std::printf("  %s\n", text);
    fake_cuda::clear_log();
    report("train", sn_forward(layer, W, W_sn, 1, nullptr), layer, &sn_paths_t::train);
    report("scale", sn_forward_scale_only(layer, W, 1, nullptr), layer, &sn_paths_t::scale_only);
    report("eval", sn_forward(layer, W, W_sn, 0, nullptr), layer, &sn_paths_t::eval);
    report("backward", sn_backward(layer, W, G, dW, 0, nullptr, nullptr), layer, &sn_paths_t::backward);
  }
  cudaFree(W);
  cudaFree(W_sn);
  cudaFree(G);
  cudaFree(dW);
  sn_layer_destroy(layer);
  return rc;
}

// Every kernel's code for `arch`, most registers first; 1 if any has local memory.
int list_kernels(int arch) {
  std::vector<fake_cuda::KernelInfo> ks;
  for (const fake_cuda::KernelInfo &k : fake_cuda::kernel_codes())
    if (k.code.arch == arch) ks.push_back(k);
  std::sort(ks.begin(), ks.end(), [](const fake_cuda::KernelInfo &a, const fake_cuda::KernelInfo &b) {
    return a.code.regs != b.code.regs ? a.code.regs > b.code.regs : a.name < b.name;
  });
  std::printf("%4s %6s %6s %6s  kernel (sm_%d)\n", "regs", "local", "smem", "bound", arch);
  int with_local = 0;
  for (const fake_cuda::KernelInfo &k : ks) {
    const fake_cuda::KernelCode &c = k.code;
    std::printf("%4d %6d %6zu %6d  %s\n", c.regs, c.frame, c.static_smem, c.max_threads, short_name(k.name).c_str());
    with_local += c.frame > 0;
  }
  std::printf("kernels: %zu, with local memory: %d\n", ks.size(), with_local);
  return with_local ? 1 : 0;
}

}  // namespace

int main(int argc, char **argv) {
  fake_cuda::DeviceProps device = fake_cuda::h100();
  const char *device_name = "h100";
  std::vector<Layer> layers;
  bool kernels = false;
  for (int i = 1; i < argc; ++i) {
    Layer l{};
    if (!std::strcmp(argv[i], "--kernels")) {
      kernels = true;
    } else if (!std::strcmp(argv[i], "--device") && i + 1 < argc) {
      device_name = argv[++i];
      if (!std::strcmp(device_name, "a100")) device = fake_cuda::a100();
      else if (std::strcmp(device_name, "h100")) return std::fprintf(stderr, "unknown device %s\n", device_name), 2;
    } else if (!std::strcmp(argv[i], "--tune") && i + 1 < argc) {
      setenv("SPECNORM_TUNE", argv[++i], 1);
    } else if (parse(argv[i], &l)) {
      layers.push_back(l);
    } else {
      std::fprintf(stderr,
                   "usage: %s [--device h100|a100] [--tune SPECNORM_TUNE] HxW[:f32|bf16|f16] ...\n"
                   "       %s [--device h100|a100] --kernels\n",
                   argv[0], argv[0]);
      return 2;
    }
  }
  if (layers.empty())
    for (const Layer &l : {Layer{4096, 4096, SN_DTYPE_FLOAT32}, Layer{4096, 16384, SN_DTYPE_FLOAT32},
                           Layer{2048, 2048, SN_DTYPE_FLOAT32}, Layer{3072, 768, SN_DTYPE_FLOAT32},
                           Layer{768, 3072, SN_DTYPE_FLOAT32}})
      for (sn_dtype_t dt : {SN_DTYPE_FLOAT32, SN_DTYPE_BFLOAT16}) layers.push_back(Layer{l.h, l.w, dt});
  fake_cuda::reset({device});
  if (!fake_cuda::has_code_for(device)) {
    std::fprintf(stderr, "the build has no sm_%d%d machine code\n", device.major, device.minor);
    return 1;
  }
  if (kernels) return list_kernels(device.major * 10 + device.minor);
  const char *tune = std::getenv("SPECNORM_TUNE");
  std::printf("%s-like device (fake CUDA runtime), SPECNORM_TUNE=%s\n", device_name, tune ? tune : "");
  int rc = 0;
  for (const Layer &l : layers) rc |= run(l);
  for (const std::string &v : fake_cuda::violations()) {
    std::printf("violation: %s\n", v.c_str());
    rc = 1;
  }
  return rc;
}
