// The CUDA runtime of the emulated build (tests/emu_cuda/): the calls the library and its GPU
// tests make, on one emulated device with host memory as device memory. Every call completes
// before it returns (streams are in order by construction); launches run the kernels (emu.h),
// checked first as the runtime checks them (block size, dynamic shared memory against what
// cudaFuncSetAttribute allowed, cooperative grids against the occupancy, cluster sizes). A stream
// capture records launches, copies and memsets in a graph that cudaGraphLaunch replays.
//
// The device: compute capability 9.0, SPECNORM_EMU_SMS multiprocessors (8 unless set), an H100's
// shared memory limits. Occupancy counts threads (2048 per SM) and shared memory only.
#include <cuda_runtime.h>
#include <elf.h>
#include <link.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "emu.h"
#include "../cuda_error_names.h"

namespace {

constexpr int kMaxThreadsPerSm = 2048;
constexpr int kMaxBlocksPerSm = 32;
constexpr int kSmemPerSm = 233472;
constexpr int kSmemOptin = 232448;
constexpr int kSmemDefault = 48 * 1024;
constexpr int kStaticSmem = 4096;   // what each kernel is taken to declare statically
constexpr int kReservedSmem = 1024;  // per block, by the system
constexpr int kMaxCluster = 8;

// From the program's symbol table (.symtab: the kernels and their static shared memory are local
// symbols): the kernels' names, as the runtime gives them (mangled), at the addresses the program
// was loaded at; and the static __shared__ variables (thread_local here: the TLS objects local to
// a function, "_ZZ..."), by their offsets from emu::tls_anchor in the thread-local block.
struct SymbolTable {
  std::map<uintptr_t, std::string> functions;
  std::vector<std::pair<long, size_t>> shared;
};

const SymbolTable &symbol_table() {
  static const SymbolTable table = [] {
    SymbolTable t;
    uintptr_t base = 0;
    dl_iterate_phdr([](dl_phdr_info *info, size_t, void *data) {
      *static_cast<uintptr_t *>(data) = info->dlpi_addr;
      return 1;  // the first object is the program itself
    }, &base);
    FILE *f = std::fopen("/proc/self/exe", "rb");
    if (!f) return t;
    std::vector<char> elf;
    char buf[1 << 16];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) elf.insert(elf.end(), buf, buf + n);
    std::fclose(f);
    if (elf.size() < sizeof(Elf64_Ehdr)) return t;
    const auto *eh = reinterpret_cast<const Elf64_Ehdr *>(elf.data());
    if (eh->e_shoff == 0 || eh->e_shoff + (size_t)eh->e_shnum * sizeof(Elf64_Shdr) > elf.size()) return t;
    const auto *sh = reinterpret_cast<const Elf64_Shdr *>(elf.data() + eh->e_shoff);
    for (unsigned i = 0; i < eh->e_shnum; ++i) {
      if (sh[i].sh_type != SHT_SYMTAB || sh[i].sh_link >= eh->e_shnum) continue;
      const Elf64_Shdr &str = sh[sh[i].sh_link];
      if (sh[i].sh_offset + sh[i].sh_size > elf.size() || str.sh_offset + str.sh_size > elf.size()) continue;
      const auto *sym = reinterpret_cast<const Elf64_Sym *>(elf.data() + sh[i].sh_offset);
      long anchor = -1;
      std::vector<std::pair<long, size_t>> tls;
      for (size_t k = 0; k < sh[i].sh_size / sizeof(Elf64_Sym); ++k) {
        if (sym[k].st_name >= str.sh_size) continue;
        const char *name = elf.data() + str.sh_offset + sym[k].st_name;
        const int type = ELF64_ST_TYPE(sym[k].st_info);
        if (type == STT_FUNC && sym[k].st_value) t.functions.emplace(base + sym[k].st_value, name);
        if (type == STT_TLS && std::strcmp(name, "_ZN3emu10tls_anchorE") == 0) anchor = (long)sym[k].st_value;
        if (type == STT_TLS && std::strncmp(name, "_ZZ", 3) == 0 && sym[k].st_size > 0)
          tls.emplace_back((long)sym[k].st_value, (size_t)sym[k].st_size);
      }
      if (anchor >= 0)
        for (const auto &v : tls) t.shared.emplace_back(v.first - anchor, v.second);
    }
    return t;
  }();
  return table;
}

const char *kernel_name(const void *fn) {
  const auto &f = symbol_table().functions;
  auto it = f.find(reinterpret_cast<uintptr_t>(fn));
  return it == f.end() ? "kernel" : it->second.c_str();
}

int sm_count() {
  static const int n = [] {
    const char *s = std::getenv("SPECNORM_EMU_SMS");
    const int v = s ? std::atoi(s) : 0;
    return v > 0 && v <= 132 ? v : 8;
  }();
  return n;
}

enum class Kind { kDevice, kPinned };

struct Node {  // a recorded operation of a capture
  enum { kKernel, kCopy, kMemset } type;
  cudaLaunchConfig_t cfg{};
  std::vector<cudaLaunchAttribute> attrs;
  std::function<void()> body;
  const void *kernel = nullptr;
  std::string name;
  void *dst = nullptr;
  const void *src = nullptr;
  size_t bytes = 0;
  int value = 0;
};

struct Graph {
  std::vector<std::unique_ptr<Node>> nodes;
};

struct State {
  std::mutex m;
  std::map<uintptr_t, std::pair<size_t, Kind>> allocations;  // start -> (bytes, kind)
  std::map<const void *, int> max_dynamic_smem;                // per kernel
  cudaStream_t capturing = nullptr;
  bool capture_invalid = false;
  cudaStreamCaptureMode capture_mode = cudaStreamCaptureModeGlobal;
  Graph *capture = nullptr;
  uintptr_t next_stream = 0x57000;
};

State &state() {
  static State s;
  return s;
}

thread_local cudaError_t t_last = cudaSuccess;
thread_local cudaStreamCaptureMode t_mode = cudaStreamCaptureModeGlobal;

cudaError_t ret(cudaError_t e) {
  if (e != cudaSuccess) t_last = e;
  return e;
}

// The allocation that holds [p, p + n), or none.
const std::pair<const uintptr_t, std::pair<size_t, Kind>> *find(State &s, const void *p, size_t n) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = s.allocations.upper_bound(a);
  if (it == s.allocations.begin()) return nullptr;
  --it;
  if (a + n > it->first + it->second.first) return nullptr;
  return &*it;
}

bool capturing(State &s, cudaStream_t stream) { return s.capture && s.capturing == stream; }

// A call the driver refuses while a capture is on in global mode (or on the calling thread's own
// stream): it invalidates the capture.
bool refused_by_capture(State &s) {
  if (!s.capture || t_mode == cudaStreamCaptureModeRelaxed) return false;
  s.capture_invalid = true;
  return true;
}

int blocks_per_sm(int threads, size_t smem) {
  if (threads <= 0 || threads > 1024) return 0;
  const int warps = (threads + 31) / 32;
  int n = kMaxThreadsPerSm / (warps * 32);
  if (n > kMaxBlocksPerSm) n = kMaxBlocksPerSm;
  const size_t per_block = smem + kStaticSmem + kReservedSmem;
  const int by_smem = (int)(kSmemPerSm / per_block);
  return n < by_smem ? n : by_smem;
}

cudaError_t check_launch(State &s, const cudaLaunchConfig_t &cfg, const void *kernel) {
  const dim3 g = cfg.gridDim, b = cfg.blockDim;
  const long long threads = (long long)b.x * b.y * b.z;
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.y > 65535 || g.z > 65535 || threads == 0 || threads > 1024 ||
      b.z > 64)
    return cudaErrorInvalidConfiguration;
  auto it = s.max_dynamic_smem.find(kernel);
  const size_t allowed = it == s.max_dynamic_smem.end() ? (size_t)kSmemDefault : (size_t)it->second;
  if (cfg.dynamicSmemBytes > allowed) return cudaErrorInvalidValue;
  const emu::LaunchAttrs a = emu::launch_attrs(cfg);
  if (a.cluster.y != 1 || a.cluster.z != 1 || a.cluster.x == 0 || a.cluster.x > kMaxCluster || g.x % a.cluster.x != 0)
    return cudaErrorInvalidClusterSize;
  const int per_sm = blocks_per_sm((int)threads, cfg.dynamicSmemBytes);
  if (per_sm == 0) return cudaErrorLaunchOutOfResources;
  if (a.cooperative && (long long)g.x * g.y * g.z > (long long)per_sm * sm_count())
    return cudaErrorCooperativeLaunchTooLarge;
  return cudaSuccess;
}

cudaError_t run_node(const Node &n) {
  switch (n.type) {
    case Node::kKernel: return emu::run(n.cfg, n.body, n.name.c_str());
    case Node::kCopy: std::memmove(n.dst, n.src, n.bytes); break;
    case Node::kMemset: std::memset(n.dst, n.value, n.bytes); break;
  }
  return cudaSuccess;
}

// A copy (of src) or memset (to `value`) of `bytes` at dst: recorded when its stream is being
// captured (asynchronous calls), refused when a synchronous call would break a capture, else done
// now.
cudaError_t enqueue(State &s, std::unique_lock<std::mutex> &lock, cudaStream_t stream, bool async,
                    decltype(Node::type) type, void *dst, const void *src, int value, size_t bytes) {
  auto node = std::make_unique<Node>();
  node->type = type;
  node->dst = dst;
  node->src = src;
  node->value = value;
  node->bytes = bytes;
  if (async && capturing(s, stream)) {
    s.capture->nodes.push_back(std::move(node));
    return cudaSuccess;
  }
  if (!async && refused_by_capture(s)) return ret(cudaErrorStreamCaptureImplicit);
  lock.unlock();
  return run_node(*node);
}

cudaError_t copy(void *dst, const void *src, size_t n, cudaMemcpyKind kind, cudaStream_t stream, bool async) {
  State &s = state();
  std::unique_lock<std::mutex> lock(s.m);
  if (n == 0) return cudaSuccess;
  const bool dst_dev = find(s, dst, n) != nullptr, src_dev = find(s, src, n) != nullptr;
  bool ok = true;
  switch (kind) {
    case cudaMemcpyHostToDevice: ok = dst_dev; break;
    case cudaMemcpyDeviceToHost: ok = src_dev; break;
    case cudaMemcpyDeviceToDevice: ok = dst_dev && src_dev; break;
    case cudaMemcpyHostToHost: ok = true; break;
    case cudaMemcpyDefault: ok = true; break;
    default: return ret(cudaErrorInvalidMemcpyDirection);
  }
  if (!ok) return ret(cudaErrorInvalidValue);
  return enqueue(s, lock, stream, async, Node::kCopy, dst, src, 0, n);
}

cudaError_t fill(void *p, int value, size_t n, cudaStream_t stream, bool async) {
  State &s = state();
  std::unique_lock<std::mutex> lock(s.m);
  if (n == 0) return cudaSuccess;
  if (!find(s, p, n)) return ret(cudaErrorInvalidValue);
  return enqueue(s, lock, stream, async, Node::kMemset, p, nullptr, value, n);
}

cudaError_t allocate(void **p, size_t size, Kind kind) {
  if (!p) return ret(cudaErrorInvalidValue);
  State &s = state();
  std::lock_guard<std::mutex> lock(s.m);
  if (kind == Kind::kDevice && refused_by_capture(s)) return ret(cudaErrorStreamCaptureUnsupported);
  const size_t bytes = size ? (size + 255) / 256 * 256 : 256;
  void *m = std::aligned_alloc(256, bytes);
  if (!m) return ret(cudaErrorMemoryAllocation);
  std::memset(m, 0xff, bytes);  // NaN: memory the library reads before writing shows
  s.allocations[reinterpret_cast<uintptr_t>(m)] = {size ? size : 1, kind};
  *p = m;
  return cudaSuccess;
}

cudaError_t release(void *p, Kind kind) {
  if (!p) return cudaSuccess;
  State &s = state();
  std::lock_guard<std::mutex> lock(s.m);
  auto it = s.allocations.find(reinterpret_cast<uintptr_t>(p));
  if (it == s.allocations.end() || it->second.second != kind) return ret(cudaErrorInvalidValue);
  if (kind == Kind::kDevice && refused_by_capture(s)) return ret(cudaErrorStreamCaptureUnsupported);
  s.allocations.erase(it);
  std::free(p);
  return cudaSuccess;
}

}  // namespace

namespace emu {

const std::vector<std::pair<long, size_t>> &static_shared() { return symbol_table().shared; }

cudaError_t submit(const cudaLaunchConfig_t *cfg, const void *kernel, std::function<void()> body,
                   const char *name) {
  if (!cfg || !kernel) return ret(cudaErrorInvalidValue);
  if (!name) name = kernel_name(kernel);
  State &s = state();
  std::unique_lock<std::mutex> lock(s.m);
  if (cudaError_t e = check_launch(s, *cfg, kernel)) return ret(e);
  if (capturing(s, cfg->stream)) {
    auto node = std::make_unique<Node>();
    node->type = Node::kKernel;
    node->attrs.assign(cfg->attrs, cfg->attrs + cfg->numAttrs);
    node->cfg = *cfg;
    node->cfg.attrs = node->attrs.data();
    node->body = std::move(body);
    node->kernel = kernel;
    node->name = name;
    s.capture->nodes.push_back(std::move(node));
    return cudaSuccess;
  }
  if (s.capture && !cfg->stream && t_mode != cudaStreamCaptureModeRelaxed) {
    s.capture_invalid = true;  // the legacy stream during a global capture
    return ret(cudaErrorStreamCaptureImplicit);
  }
  lock.unlock();
  return ret(run(*cfg, body, name));
}

}  // namespace emu

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = t_last;
  t_last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return t_last; }

const char *cudaGetErrorName(cudaError_t e) { return test_cuda_error_name(e); }
const char *cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }

cudaError_t cudaGetDeviceCount(int *count) {
  if (!count) return ret(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int *device) {
  if (!device) return ret(cudaErrorInvalidValue);
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : ret(cudaErrorInvalidDevice); }
cudaError_t cudaDeviceSynchronize(void) {
  State &s = state();
  std::lock_guard<std::mutex> lock(s.m);
  if (refused_by_capture(s)) return ret(cudaErrorStreamCaptureUnsupported);
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device) {
  if (!value) return ret(cudaErrorInvalidValue);
  if (device != 0) return ret(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMultiProcessorCount: *value = sm_count(); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = kSmemOptin; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = kSmemPerSm; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = kSmemDefault; break;
    case cudaDevAttrL2CacheSize: *value = 50 * 1024 * 1024; break;
    case cudaDevAttrCooperativeLaunch: *value = 1; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = kMaxThreadsPerSm; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrClusterLaunch: *value = 1; break;
    default: return ret(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total) {
  if (free_bytes) *free_bytes = size_t{8} << 30;
  if (total) *total = size_t{16} << 30;
  return cudaSuccess;
}

cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes *attr, const void *fn) {
  if (!attr || !fn) return ret(cudaErrorInvalidValue);
  State &s = state();
  std::lock_guard<std::mutex> lock(s.m);
  *attr = cudaFuncAttributes{};
  attr->sharedSizeBytes = kStaticSmem;
  attr->maxThreadsPerBlock = 1024;
  attr->numRegs = 32;
  attr->ptxVersion = 90;
  attr->binaryVersion = 90;
  auto it = s.max_dynamic_smem.find(fn);
  attr->maxDynamicSharedSizeBytes = it == s.max_dynamic_smem.end() ? kSmemDefault : it->second;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void *fn, enum cudaFuncAttribute attr, int value) {
  if (!fn) return ret(cudaErrorInvalidValue);
  State &s = state();
  std::lock_guard<std::mutex> lock(s.m);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || value > kSmemOptin - kStaticSmem) return ret(cudaErrorInvalidValue);
    s.max_dynamic_smem[fn] = value;
  }
  return cudaSuccess;
}

cudaError_t cudaFuncGetName(const char **name, const void *fn) {
  if (!name || !fn) return ret(cudaErrorInvalidValue);
  *name = kernel_name(fn);
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int *blocks, const void *fn, int threads,
                                                                    size_t smem, unsigned int) {
  if (!blocks || !fn) return ret(cudaErrorInvalidValue);
  *blocks = blocks_per_sm(threads, smem);
  return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *blocks, const void *fn, int threads, size_t smem) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(blocks, fn, threads, smem, 0);
}
cudaError_t cudaOccupancyMaxActiveClusters(int *clusters, const void *fn, const cudaLaunchConfig_t *cfg) {
  if (!clusters || !fn || !cfg) return ret(cudaErrorInvalidValue);
  const unsigned c = emu::launch_attrs(*cfg).cluster.x;
  if (c == 0 || c > kMaxCluster) return ret(cudaErrorInvalidClusterSize);
  const int threads = (int)(cfg->blockDim.x * cfg->blockDim.y * cfg->blockDim.z);
  *clusters = blocks_per_sm(threads, cfg->dynamicSmemBytes) * sm_count() / (int)c;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t size) { return allocate(p, size, Kind::kDevice); }
cudaError_t cudaMallocHost(void **p, size_t size) { return allocate(p, size, Kind::kPinned); }
cudaError_t cudaFree(void *p) { return release(p, Kind::kDevice); }
cudaError_t cudaFreeHost(void *p) { return release(p, Kind::kPinned); }

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *attr, const void *p) {
  if (!attr) return ret(cudaErrorInvalidValue);
  State &s = state();
  std::lock_guard<std::mutex> lock(s.m);
  *attr = cudaPointerAttributes{};
  const auto *a = find(s, p, 1);
  if (!a) {
    attr->type = cudaMemoryTypeUnregistered;
    attr->device = -2;
    return cudaSuccess;
  }
  attr->type = a->second.second == Kind::kDevice ? cudaMemoryTypeDevice : cudaMemoryTypeHost;
  attr->device = 0;
  attr->devicePointer = const_cast<void *>(p);
  if (a->second.second == Kind::kPinned) attr->hostPointer = const_cast<void *>(p);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind) {
  return copy(dst, src, n, kind, nullptr, false);
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind, cudaStream_t stream) {
  return copy(dst, src, n, kind, stream, true);
}
cudaError_t cudaMemset(void *p, int value, size_t n) { return fill(p, value, n, nullptr, false); }
cudaError_t cudaMemsetAsync(void *p, int value, size_t n, cudaStream_t stream) {
  return fill(p, value, n, stream, true);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int) {
  if (!stream) return ret(cudaErrorInvalidValue);
  State &s = state();
  std::lock_guard<std::mutex> lock(s.m);
  *stream = reinterpret_cast<cudaStream_t>(s.next_stream += 0x10);
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *stream) { return cudaStreamCreateWithFlags(stream, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  State &s = state();
  std::lock_guard<std::mutex> lock(s.m);
  if (capturing(s, stream)) {
    s.capture_invalid = true;
    return ret(cudaErrorStreamCaptureUnsupported);
  }
  if (refused_by_capture(s)) return ret(cudaErrorStreamCaptureUnsupported);
  return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode) {
  State &s = state();
  std::lock_guard<std::mutex> lock(s.m);
  if (!stream || s.capture) return ret(cudaErrorInvalidValue);  // one capture at a time here
  s.capture = new Graph;
  s.capturing = stream;
  s.capture_invalid = false;
  s.capture_mode = mode;
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph) {
  if (!graph) return ret(cudaErrorInvalidValue);
  State &s = state();
  std::lock_guard<std::mutex> lock(s.m);
  if (!capturing(s, stream)) return ret(cudaErrorIllegalState);
  Graph *g = s.capture;
  s.capture = nullptr;
  s.capturing = nullptr;
  if (s.capture_invalid) {
    delete g;
    *graph = nullptr;
    return ret(cudaErrorStreamCaptureInvalidated);
  }
  *graph = reinterpret_cast<cudaGraph_t>(g);
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, enum cudaStreamCaptureStatus *status) {
  if (!status) return ret(cudaErrorInvalidValue);
  State &s = state();
  std::lock_guard<std::mutex> lock(s.m);
  if (capturing(s, stream))
    *status = s.capture_invalid ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
  else if (!stream && s.capture && s.capture_mode != cudaStreamCaptureModeRelaxed)
    return ret(cudaErrorStreamCaptureImplicit);
  else
    *status = cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
cudaError_t cudaThreadExchangeStreamCaptureMode(enum cudaStreamCaptureMode *mode) {
  if (!mode) return ret(cudaErrorInvalidValue);
  const cudaStreamCaptureMode old = t_mode;
  t_mode = *mode;
  *mode = old;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long) {
  if (!exec || !graph) return ret(cudaErrorInvalidValue);
  *exec = reinterpret_cast<cudaGraphExec_t>(graph);  // replays the graph's own nodes
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t) {
  if (!exec) return ret(cudaErrorInvalidValue);
  for (const auto &n : reinterpret_cast<Graph *>(exec)->nodes)
    if (cudaError_t e = run_node(*n)) return ret(e);  // (the device stops at a failed kernel)
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t) { return cudaSuccess; }
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete reinterpret_cast<Graph *>(graph);
  return cudaSuccess;
}
cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t *nodes, size_t *count) {
  if (!graph || !count) return ret(cudaErrorInvalidValue);
  Graph *g = reinterpret_cast<Graph *>(graph);
  if (nodes)
    for (size_t i = 0; i < *count && i < g->nodes.size(); ++i)
      nodes[i] = reinterpret_cast<cudaGraphNode_t>(g->nodes[i].get());
  *count = g->nodes.size();
  return cudaSuccess;
}
cudaError_t cudaGraphNodeGetType(cudaGraphNode_t node, enum cudaGraphNodeType *type) {
  if (!node || !type) return ret(cudaErrorInvalidValue);
  switch (reinterpret_cast<Node *>(node)->type) {
    case Node::kKernel: *type = cudaGraphNodeTypeKernel; break;
    case Node::kCopy: *type = cudaGraphNodeTypeMemcpy; break;
    case Node::kMemset: *type = cudaGraphNodeTypeMemset; break;
  }
  return cudaSuccess;
}
cudaError_t cudaGraphKernelNodeGetParams(cudaGraphNode_t node, struct cudaKernelNodeParams *params) {
  if (!node || !params) return ret(cudaErrorInvalidValue);
  Node *n = reinterpret_cast<Node *>(node);
  if (n->type != Node::kKernel) return ret(cudaErrorInvalidValue);
  *params = cudaKernelNodeParams{};
  params->func = const_cast<void *>(n->kernel);
  params->gridDim = n->cfg.gridDim;
  params->blockDim = n->cfg.blockDim;
  params->sharedMemBytes = (unsigned)n->cfg.dynamicSmemBytes;
  return cudaSuccess;
}

}  // extern "C"
