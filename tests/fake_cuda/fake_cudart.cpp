// The fake CUDA runtime of tests/fake_cuda/fake_cuda.h: the runtime entry points the library uses,
// the registration calls nvcc's host stubs make before main, and the tests' controls. Written from
// the CUDA Runtime API's documented behaviour. Each kernel's registers, static shared memory and
// launch bounds are its machine code's (fatbin.h), and blocks resident per SM come from the
// toolkit's own occupancy calculator (cuda_occupancy.h), as the driver's do.
#include "fake_cuda.h"
#include "fatbin.h"
#include "../cuda_error_names.h"

#include <cuda_occupancy.h>

#include <cxxabi.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>

namespace fake_cuda {
namespace {

constexpr int kMaxDevices = 16;

struct Func {
  std::string name;     // demangled
  std::string mangled;  // as in the cubins
  // cudaFuncAttributeMaxDynamicSharedMemorySize, per device; -1: the default (48 KB less the
  // kernel's static shared memory)
  int max_dyn[kMaxDevices];
  bool nonportable = false;
  Func() { std::fill(max_dyn, max_dyn + kMaxDevices, -1); }
};

enum class Kind { kDevice, kManaged, kPinned };

// Device memory is one shared mapping seen twice: at the address the library gets, without access
// (a host read or write of device memory faults, as it would on a GPU), and at `rw`, where the
// fake's copies and memsets reach it. Managed and pinned memory are host memory (rw == the
// address). Mapped pages stay untouched until written: a large W costs nothing (kernels never
// touch it), a memset of zeros on memory never written is skipped, and sanitizers do not poison
// (and fault in) its shadow.
struct Alloc {
  size_t size;
  int device;
  Kind kind;
  char *rw;
  size_t mapped;  // bytes of each view (device memory), 0 for host memory
  bool written;   // device memory is zero until a copy or memset writes it
};

constexpr int kDefaultSmem = 48 * 1024;  // a block's shared memory without an opt-in
constexpr int kRegsPerSm = 65536;

// A cudaMemcpyAsync not yet done: done when its stream is synchronized. (From pageable host
// memory the runtime stages the bytes before it returns: `staged` holds them.)
struct Pending {
  cudaStream_t stream;
  void *dst;
  const void *src;
  size_t n;
  cudaMemcpyKind kind;
  std::vector<char> staged;
};

struct State {
  std::mutex mu;
  std::vector<DeviceProps> devs{h100()};
  cudaError_t count_error = cudaSuccess;
  std::map<const void *, Func> funcs;
  FatbinCode code;  // every registered fat binary's kernels
  std::map<uintptr_t, Alloc> allocs;
  std::map<uintptr_t, Alloc> abandoned;  // a free that failed by injection: never freed, not counted
  size_t live = 0;
  std::deque<Pending> pending;
  Counters n;
  std::vector<Launch> log;
  std::vector<std::string> violations;
  Api fail_api = Api::kAny;
  long fail_left = 0;  // 0: none armed
  cudaError_t fail_error = cudaSuccess;
  bool fired = false;
  std::string failed_call;
  bool expecting = false;  // every stream operation on `expected`
  cudaStream_t expected = nullptr;
  bool capturing = false;
  cudaStream_t capture_stream = nullptr;
  bool invalidated = false;
  int active_sms = 0;
  // Device work of each device's legacy stream that may still run after its call returned (a
  // cudaMemset of device memory, a cudaMemcpy from pageable host memory or between devices: CUDA
  // documents them as possibly asynchronous to the host), named, by device; none: no entry. A
  // launch or copy on another stream of that device, which is not ordered after it (the tests'
  // stream is non-blocking), is a violation until a synchronization waits for it.
  std::map<int, std::string> legacy_unfinished;
};

// Never destroyed: the host stubs register their kernels before main and unregister after it.
State &st() {
  static State *s = new State;
  return *s;
}

thread_local int t_device = 0;
thread_local cudaError_t t_last = cudaSuccess;
thread_local cudaStreamCaptureMode t_mode = cudaStreamCaptureModeGlobal;

void violation(State &s, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  s.violations.emplace_back(buf);
}

cudaError_t ret(cudaError_t e) {
  if (e != cudaSuccess) t_last = e;
  return e;
}

// Counts a call of `api`; returns the injected error when it is the armed one's turn.
// (`name` is the function's: the call failed is named in the tests' messages.)
cudaError_t enter(State &s, Api api, const char *name = __builtin_FUNCTION()) {
  ++s.n.calls;
  if (s.fail_left <= 0 || (s.fail_api != Api::kAny && s.fail_api != api)) return cudaSuccess;
  if (--s.fail_left > 0) return cudaSuccess;
  s.fired = true;
  s.failed_call = name;
  // A launch's own errors come from launches only; another call fails with an invalid value.
  const bool launch_error = s.fail_error == cudaErrorLaunchOutOfResources ||
                            s.fail_error == cudaErrorCooperativeLaunchTooLarge ||
                            s.fail_error == cudaErrorInvalidConfiguration;
  return launch_error && api != Api::kLaunch ? cudaErrorInvalidValue : s.fail_error;
}

std::string demangle(const char *name) {
  int status = 0;
  std::unique_ptr<char, void (*)(void *)> d(abi::__cxa_demangle(name, nullptr, nullptr, &status),
                                             std::free);
  return status == 0 && d ? std::string(d.get()) : std::string(name);
}

const DeviceProps *device(State &s, int d) {
  return d >= 0 && d < (int)s.devs.size() && d < kMaxDevices ? &s.devs[(size_t)d] : nullptr;
}

// The live allocation holding [p, p + bytes), or null; *base its start.
Alloc *holding(State &s, const void *p, size_t bytes, uintptr_t *base = nullptr) {
  const uintptr_t a = (uintptr_t)p;
  auto it = s.allocs.upper_bound(a);
  if (it == s.allocs.begin()) return nullptr;
  --it;
  if (a < it->first || a - it->first > it->second.size || bytes > it->second.size - (a - it->first))
    return nullptr;
  if (base) *base = it->first;
  return &it->second;
}

// Where the fake reads and writes the `bytes` at p: device memory through its writable view,
// host memory as it is. Null for device memory outside a live allocation.
char *reach(State &s, const void *p, size_t bytes, bool device_side) {
  uintptr_t base = 0;
  Alloc *a = holding(s, p, bytes, &base);
  if (!device_side) return a && a->kind == Kind::kDevice ? nullptr : (char *)p;
  return a ? a->rw + ((uintptr_t)p - base) : nullptr;
}

long long threads_of(dim3 b) { return (long long)b.x * b.y * b.z; }

// The machine code of `f` that device `d` runs (cubin_for; null when the build has none: the driver
// would compile PTX, whose resources the fake cannot know).
const KernelCode *code_for(const State &s, const Func &f, const DeviceProps &d) {
  const auto *cubin = cubin_for(s.code, d.major, d.minor);
  if (!cubin) return nullptr;
  const auto k = cubin->find(f.mangled);
  return k != cubin->end() ? &k->second : nullptr;
}

// code_for, where the call needs it: a kernel without machine code for the device is a violation
// (the fake does not model PTX).
const KernelCode *needed_code(State &s, const Func &f, const DeviceProps &d) {
  const KernelCode *k = code_for(s, f, d);
  if (!k) violation(s, "%s: no machine code for sm_%d%d in the build", f.name.c_str(), d.major, d.minor);
  return k;
}

// cudaFuncAttributeMaxDynamicSharedMemorySize of `f` on device `dev`.
int dyn_limit(const Func &f, const KernelCode &k, int dev) {
  return f.max_dyn[dev] >= 0 ? f.max_dyn[dev] : std::max(0, kDefaultSmem - (int)k.static_smem);
}

// Blocks of `threads` threads and `smem` bytes of dynamic shared memory resident on one SM of
// `d` (device number `dev`), by the toolkit's occupancy calculator (an input it refuses is the
// fake's own mistake: a violation).
int per_sm(State &s, const DeviceProps &d, const Func &f, const KernelCode &k, int dev, long long threads,
           size_t smem) {
  if (threads <= 0 || threads > max_threads(k) || smem > (size_t)dyn_limit(f, k, dev)) return 0;
  cudaOccDeviceProp p;
  p.computeMajor = d.major;
  p.computeMinor = d.minor;
  p.maxThreadsPerBlock = 1024;
  p.maxThreadsPerMultiprocessor = 2048;
  p.regsPerBlock = p.regsPerMultiprocessor = kRegsPerSm;
  p.warpSize = 32;
  p.sharedMemPerBlock = kDefaultSmem;
  p.sharedMemPerMultiprocessor = (size_t)d.smem_per_sm;
  p.numSms = d.sms;
  p.sharedMemPerBlockOptin = (size_t)d.optin_smem;
  p.reservedSharedMemPerBlock = 1024;
  cudaOccFuncAttributes a;
  a.maxThreadsPerBlock = max_threads(k);
  a.numRegs = k.regs;
  a.sharedSizeBytes = k.static_smem;
  a.shmemLimitConfig = FUNC_SHMEM_LIMIT_OPTIN;
  a.maxDynamicSharedSizeBytes = (size_t)dyn_limit(f, k, dev);
  cudaOccDeviceState state;
  cudaOccResult r;
  const cudaOccError e = cudaOccMaxActiveBlocksPerMultiprocessor(&r, &p, &a, &state, (int)threads, smem);
  if (e != CUDA_OCC_SUCCESS) {
    violation(s, "%s: the occupancy calculator refused its input (error %d)", f.name.c_str(), (int)e);
    return 0;
  }
  return r.activeBlocksPerMultiprocessor;
}

Func *func(State &s, const void *f) {
  auto it = s.funcs.find(f);
  return it == s.funcs.end() ? nullptr : &it->second;
}

// A call about a kernel: the kernel, the current device, and the kernel's code for that device.
struct FuncCall {
  Func *f = nullptr;
  const DeviceProps *d = nullptr;
  const KernelCode *k = nullptr;
};

// enter() for a call about kernel `fn` on the current device, all three looked up (needed_code).
cudaError_t enter_func(State &s, Api api, const void *fn, FuncCall *c,
                       const char *name = __builtin_FUNCTION()) {
  if (cudaError_t e = enter(s, api, name)) return e;
  c->f = func(s, fn);
  c->d = device(s, t_device);
  if (!c->f || !c->d) return cudaErrorInvalidDeviceFunction;
  c->k = needed_code(s, *c->f, *c->d);
  return c->k ? cudaSuccess : cudaErrorNoKernelImageForDevice;
}

// A call the driver refuses during a capture: one that synchronizes (any mode), or, outside the
// relaxed mode, one that allocates or frees.
cudaError_t refused_in_capture(State &s, const char *what, bool synchronizes) {
  if (!s.capturing || (!synchronizes && t_mode == cudaStreamCaptureModeRelaxed)) return cudaSuccess;
  violation(s, "%s during a stream capture", what);
  s.invalidated = true;
  return cudaErrorStreamCaptureUnsupported;
}

// An operation on `stream`: the stream the test expects, and not the legacy stream during a
// capture (which the driver refuses: it would synchronize with the capturing stream).
void on_stream(State &s, cudaStream_t stream, const char *what) {
  if (s.expecting && stream != s.expected)
    violation(s, "%s on stream %p, the call's stream is %p", what, (void *)stream,
              (void *)s.expected);
  if (s.capturing && stream == nullptr) {
    violation(s, "%s on the legacy stream during a capture", what);
    s.invalidated = true;
  }
}

// A synchronous call (the legacy stream) while the test expects the call's own stream: the call
// would not be ordered after the work of a non-blocking stream such as `expected`.
void legacy(State &s, const char *what) {
  if (s.expecting && s.expected != nullptr)
    violation(s, "%s (the legacy stream) in a call given stream %p", what, (void *)s.expected);
}

// Work on `stream` (of the current device) that would not be ordered after that device's legacy
// stream's unfinished device work.
void after_legacy(State &s, cudaStream_t stream, const char *what) {
  auto it = s.legacy_unfinished.find(t_device);
  if (stream != nullptr && it != s.legacy_unfinished.end())
    violation(s, "%s on stream %p while the legacy stream's %s may still run: nothing synchronized "
                 "it, and a non-blocking stream is not ordered after it",
              what, (void *)stream, it->second.c_str());
}

// Forgets the copies pending on `stream` (all streams: every).
void drop(State &s, cudaStream_t stream, bool every = false) {
  s.pending.erase(std::remove_if(s.pending.begin(), s.pending.end(),
                                 [&](const Pending &c) { return every || c.stream == stream; }),
                  s.pending.end());
}

// Does the copies pending on `stream` (all streams: every), in order.
void flush(State &s, cudaStream_t stream, bool every) {
  std::deque<Pending> keep;
  for (Pending &c : s.pending) {
    if (!every && c.stream != stream) {
      keep.push_back(std::move(c));
      continue;
    }
    const bool dst_dev = c.kind != cudaMemcpyDeviceToHost, src_dev = c.kind != cudaMemcpyHostToDevice;
    char *to = reach(s, c.dst, c.n, dst_dev);
    const char *from = c.staged.empty() ? reach(s, c.src, c.n, src_dev) : c.staged.data();
    if (!to || !from) {
      violation(s, "an asynchronous copy of %zu bytes whose device memory was freed before it ran", c.n);
      continue;
    }
    if (dst_dev) holding(s, c.dst, c.n)->written = true;
    if (c.n) std::memmove(to, from, c.n);
  }
  s.pending.swap(keep);
}

cudaError_t launch(State &s, const cudaLaunchConfig_t &cfg, const void *fn) {
  if (cudaError_t e = enter(s, Api::kLaunch, "a launch")) {
    if (s.capturing && cfg.stream == s.capture_stream) s.invalidated = true;
    return e;
  }
  const DeviceProps *d = device(s, t_device);
  Func *f = func(s, fn);
  if (!d) return cudaErrorInvalidDevice;
  if (!f) {
    violation(s, "launch of a function the runtime does not know (%p)", fn);
    return cudaErrorInvalidDeviceFunction;
  }
  const char *name = f->name.c_str();
  const KernelCode *code = needed_code(s, *f, *d);
  if (!code) return cudaErrorNoKernelImageForDevice;
  on_stream(s, cfg.stream, name);
  after_legacy(s, cfg.stream, name);
  Launch l{f->name, t_device, cfg.stream, cfg.gridDim, cfg.blockDim, cfg.dynamicSmemBytes, 0,
           false, false, s.capturing && cfg.stream == s.capture_stream};
  for (unsigned k = 0; k < cfg.numAttrs; ++k) {
    const cudaLaunchAttribute &a = cfg.attrs[k];
    if (a.id == cudaLaunchAttributeClusterDimension) {
      if (a.val.clusterDim.x == 0 || a.val.clusterDim.y != 1 || a.val.clusterDim.z != 1)
        violation(s, "%s: cluster %ux%ux%u", name, a.val.clusterDim.x, a.val.clusterDim.y,
                  a.val.clusterDim.z);
      l.cluster = a.val.clusterDim.x;
    } else if (a.id == cudaLaunchAttributeProgrammaticStreamSerialization) {
      l.pdl = a.val.programmaticStreamSerializationAllowed != 0;
    } else if (a.id == cudaLaunchAttributeCooperative) {
      l.cooperative = a.val.cooperative != 0;
    } else {
      violation(s, "%s: launch attribute %d not modelled", name, (int)a.id);
    }
  }
  const size_t logged = s.log.size();
  s.log.push_back(l);
  ++s.n.launches;
  const dim3 g = cfg.gridDim, b = cfg.blockDim;
  const unsigned long long blocks = (unsigned long long)g.x * g.y * g.z;
  const long long threads = threads_of(b);
  cudaError_t e = cudaSuccess;
  auto bad = [&](cudaError_t err, const char *fmt, auto... args) {
    violation(s, fmt, name, args...);
    if (e == cudaSuccess) e = err;
  };
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.y > 65535 || g.z > 65535 || g.x > 0x7fffffffu)
    bad(cudaErrorInvalidConfiguration, "%s: grid %ux%ux%u", g.x, g.y, g.z);
  if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 || threads > 1024)
    bad(cudaErrorInvalidConfiguration, "%s: block %ux%ux%u", b.x, b.y, b.z);
  else if (threads > max_threads(*code))
    bad(cudaErrorLaunchOutOfResources,
        "%s: blocks of %lld threads, its code allows %d (launch bounds %d, %d registers)", threads,
        max_threads(*code), code->max_threads, code->regs);
  if (cfg.dynamicSmemBytes > (size_t)dyn_limit(*f, *code, t_device))
    bad(cudaErrorInvalidValue, "%s: %zu bytes of dynamic shared memory, the kernel allows %d",
        cfg.dynamicSmemBytes, dyn_limit(*f, *code, t_device));
  if (l.pdl && d->major < 9)
    bad(cudaErrorNotSupported, "%s: programmatic dependent launch on compute capability %d",
        d->major);
  const int resident_sms = s.active_sms > 0 ? std::min(s.active_sms, d->sms) : d->sms;
  const int fit = per_sm(s, *d, *f, *code, t_device, threads, cfg.dynamicSmemBytes);
  if (l.cluster > 0) {
    const unsigned most = f->nonportable ? 16u : 8u;
    if (d->major < 9) bad(cudaErrorNotSupported, "%s: clusters on compute capability %d", d->major);
    if (l.cluster > most) bad(cudaErrorInvalidClusterSize, "%s: clusters of %u blocks", l.cluster);
    if (g.x % l.cluster != 0)
      bad(cudaErrorInvalidClusterSize, "%s: grid %u not a multiple of the cluster %u", g.x,
          l.cluster);
    if (fit == 0 || (unsigned long long)fit * (unsigned)resident_sms < l.cluster) {
      if (resident_sms == d->sms)  // else the "MPS" refusal, below
        bad(cudaErrorLaunchOutOfResources, "%s: a cluster of %u blocks is never resident",
            l.cluster);
      else if (e == cudaSuccess)
        e = cudaErrorLaunchOutOfResources;
    }
  }
  if (l.cooperative && e == cudaSuccess) {
    if (!d->cooperative) bad(cudaErrorNotSupported, "%s: cooperative launch not supported");
    unsigned long long most = (unsigned long long)fit * (unsigned)resident_sms;
    if (l.cluster > 0) most = (most / l.cluster) * l.cluster;
    if (blocks > most) {
      // Only the library's own mistake when every SM is its: under the "MPS" limit it is the
      // refusal the library must handle.
      if (resident_sms == d->sms)
        violation(s, "%s: cooperative launch of %llu blocks, at most %llu resident", name, blocks,
                  most);
      e = cudaErrorCooperativeLaunchTooLarge;
    }
  }
  if (e != cudaSuccess && l.captured) s.invalidated = true;
  s.log[logged].error = e;
  return e;
}

}  // namespace

DeviceProps h100() { return DeviceProps{}; }
DeviceProps a100() {
  DeviceProps d;
  d.major = 8;
  d.minor = 0;
  d.sms = 108;
  d.optin_smem = 166912;
  d.smem_per_sm = 167936;
  d.l2_bytes = 40 * 1024 * 1024;
  return d;
}
DeviceProps a40() {
  DeviceProps d;
  d.major = 8;
  d.minor = 6;
  d.sms = 84;
  d.optin_smem = 101376;
  d.smem_per_sm = 102400;
  d.l2_bytes = 6 * 1024 * 1024;
  return d;
}

void reset(const std::vector<DeviceProps> &props) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  s.devs = props;
  s.count_error = cudaSuccess;
  for (auto &f : s.funcs) {
    std::fill(f.second.max_dyn, f.second.max_dyn + kMaxDevices, -1);
    f.second.nonportable = false;
  }
  drop(s, nullptr, true);
  s.n = Counters{};
  s.log.clear();
  s.violations.clear();
  s.fail_left = 0;
  s.fired = false;
  s.expecting = false;
  s.capturing = false;
  s.invalidated = false;
  s.active_sms = 0;
  s.legacy_unfinished.clear();
  t_device = 0;
  t_last = cudaSuccess;
  t_mode = cudaStreamCaptureModeGlobal;
}

void set_device_count_error(cudaError_t e) {
  std::lock_guard<std::mutex> g(st().mu);
  st().count_error = e;
}

void fail_nth(Api api, long n, cudaError_t error) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  s.fail_api = api;
  s.fail_left = n;
  s.fail_error = error;
  s.fired = false;
}

void raise(cudaError_t e) { t_last = e; }

long pending_to_host() {
  std::lock_guard<std::mutex> g(st().mu);
  long n = 0;
  for (const Pending &c : st().pending) n += c.kind == cudaMemcpyDeviceToHost;
  return n;
}

void drop_pending() {
  std::lock_guard<std::mutex> g(st().mu);
  drop(st(), nullptr, true);
}

bool failure_fired() {
  std::lock_guard<std::mutex> g(st().mu);
  return st().fired;
}

std::string failed_call() {
  std::lock_guard<std::mutex> g(st().mu);
  return st().fired ? st().failed_call : std::string();
}

void expect_stream(cudaStream_t stream) {
  std::lock_guard<std::mutex> g(st().mu);
  st().expecting = true;
  st().expected = stream;
}

void expect_any_stream() {
  std::lock_guard<std::mutex> g(st().mu);
  st().expecting = false;
}

void set_capturing(bool on, cudaStream_t stream) {
  std::lock_guard<std::mutex> g(st().mu);
  st().capturing = on;
  st().capture_stream = stream;
  if (on) st().invalidated = false;
}

bool capture_invalidated() {
  std::lock_guard<std::mutex> g(st().mu);
  return st().capturing && st().invalidated;
}

void set_active_sms(int sms) {
  std::lock_guard<std::mutex> g(st().mu);
  st().active_sms = sms;
}

std::vector<KernelInfo> kernel_codes() {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  std::vector<KernelInfo> out;
  for (const auto &f : s.funcs)
    for (const auto &arch : s.code.by_arch) {
      auto k = arch.second.find(f.second.mangled);
      if (k != arch.second.end())
        out.push_back(KernelInfo{f.second.name, f.second.mangled, k->second});
    }
  return out;
}

std::vector<std::string> fatbin_problems() {
  std::lock_guard<std::mutex> g(st().mu);
  return st().code.problems;
}

bool has_code_for(const DeviceProps &d) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  for (const auto &f : s.funcs)
    if (code_for(s, f.second, d)) return true;
  return false;
}

Counters counters() {
  std::lock_guard<std::mutex> g(st().mu);
  return st().n;
}

std::vector<Launch> launches() {
  std::lock_guard<std::mutex> g(st().mu);
  return st().log;
}

std::vector<std::string> violations() {
  std::lock_guard<std::mutex> g(st().mu);
  return st().violations;
}

void clear_log() {
  std::lock_guard<std::mutex> g(st().mu);
  st().log.clear();
}

long live_allocations() {
  std::lock_guard<std::mutex> g(st().mu);
  return (long)st().allocs.size();
}

size_t live_bytes() {
  std::lock_guard<std::mutex> g(st().mu);
  return st().live;
}

}  // namespace fake_cuda

using fake_cuda::Api;
using fake_cuda::st;
using fake_cuda::State;

// ---- registration (nvcc's host stubs, before main) ---------------------------------------------
extern "C" {

void **__cudaRegisterFatBinary(void *fatCubin) {
  {
    State &s = st();
    std::lock_guard<std::mutex> g(s.mu);
    fake_cuda::read_fatbin(fatCubin, &s.code);
  }
  static void *handles[64];
  static int next = 0;
  void **h = &handles[next++ % 64];
  *h = fatCubin;
  return h;
}
void __cudaRegisterFatBinaryEnd(void **) {}
void __cudaUnregisterFatBinary(void **) {}
char __cudaInitModule(void **) { return 1; }
void __cudaRegisterFunction(void **, const char *hostFun, char *, const char *deviceName, int,
                            uint3 *, uint3 *, dim3 *, dim3 *, int *) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  s.funcs[hostFun].name = fake_cuda::demangle(deviceName);
  s.funcs[hostFun].mangled = deviceName;
}
cudaError_t __cudaGetKernel(cudaKernel_t *kernel, const void *fn) {
  *kernel = (cudaKernel_t)fn;
  return cudaSuccess;
}
cudaError_t __cudaPopCallConfiguration(dim3 *, dim3 *, size_t *, void *) {
  return cudaErrorNotSupported;  // the library launches through cudaLaunchKernelExC only
}
cudaError_t __cudaLaunchKernel(cudaKernel_t kernel, dim3 grid, dim3 block, void **, size_t smem,
                               cudaStream_t stream) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  return fake_cuda::ret(fake_cuda::launch(s, cfg, (const void *)kernel));
}

// ---- the runtime API the library calls -----------------------------------------------------------

cudaError_t cudaDeviceSynchronize(void) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  if (cudaError_t e = fake_cuda::enter(s, Api::kStreamSync)) return fake_cuda::ret(e);
  if (cudaError_t e = fake_cuda::refused_in_capture(s, "cudaDeviceSynchronize", true))
    return fake_cuda::ret(e);
  fake_cuda::legacy(s, "cudaDeviceSynchronize");
  ++s.n.syncs;
  fake_cuda::flush(s, nullptr, true);
  s.legacy_unfinished.erase(fake_cuda::t_device);
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = fake_cuda::t_last;
  fake_cuda::t_last = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return fake_cuda::t_last; }

const char *cudaGetErrorName(cudaError_t e) { return test_cuda_error_name(e); }

const char *cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }

cudaError_t cudaGetDeviceCount(int *count) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  if (cudaError_t e = fake_cuda::enter(s, Api::kGetDeviceCount)) return fake_cuda::ret(e);
  if (s.count_error != cudaSuccess) {
    *count = 0;
    return fake_cuda::ret(s.count_error);
  }
  *count = (int)s.devs.size();
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  if (cudaError_t e = fake_cuda::enter(s, Api::kGetDevice)) return fake_cuda::ret(e);
  *device = fake_cuda::t_device;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  if (cudaError_t e = fake_cuda::enter(s, Api::kSetDevice)) return fake_cuda::ret(e);
  if (!fake_cuda::device(s, device)) return fake_cuda::ret(cudaErrorInvalidDevice);
  fake_cuda::t_device = device;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  if (cudaError_t e = fake_cuda::enter(s, Api::kDeviceGetAttribute)) return fake_cuda::ret(e);
  const fake_cuda::DeviceProps *d = fake_cuda::device(s, device);
  if (!d) return fake_cuda::ret(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = d->sms; break;
    case cudaDevAttrComputeCapabilityMajor: *value = d->major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = d->minor; break;
    case cudaDevAttrL2CacheSize: *value = d->l2_bytes; break;
    case cudaDevAttrCooperativeLaunch: *value = d->cooperative; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = d->optin_smem; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = d->smem_per_sm; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrClusterLaunch: *value = d->major >= 9; break;
    default:
      fake_cuda::violation(s, "cudaDeviceGetAttribute(%d) not modelled", (int)attr);
      return fake_cuda::ret(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes *attr, const void *fn) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  fake_cuda::FuncCall c;
  if (cudaError_t e = fake_cuda::enter_func(s, Api::kFuncGetAttributes, fn, &c)) return fake_cuda::ret(e);
  *attr = cudaFuncAttributes{};
  attr->maxThreadsPerBlock = fake_cuda::max_threads(*c.k);
  attr->numRegs = c.k->regs;
  attr->sharedSizeBytes = c.k->static_smem;
  attr->localSizeBytes = (size_t)c.k->frame;
  // The build's cubins are compiled from the PTX of their own architecture (CUDA_ARCHITECTURES
  // NN-real).
  attr->ptxVersion = attr->binaryVersion = c.k->arch;
  attr->maxDynamicSharedSizeBytes = fake_cuda::dyn_limit(*c.f, *c.k, fake_cuda::t_device);
  attr->nonPortableClusterSizeAllowed = c.f->nonportable;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void *fn, enum cudaFuncAttribute attr, int value) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  fake_cuda::FuncCall c;
  if (cudaError_t e = fake_cuda::enter_func(s, Api::kFuncSetAttribute, fn, &c)) return fake_cuda::ret(e);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || (size_t)value + c.k->static_smem > (size_t)c.d->optin_smem) {
      fake_cuda::violation(s, "%s: dynamic shared memory limit %d, with %zu static above the opt-in %d",
                           c.f->name.c_str(), value, c.k->static_smem, c.d->optin_smem);
      return fake_cuda::ret(cudaErrorInvalidValue);
    }
    c.f->max_dyn[fake_cuda::t_device] = value;
  } else if (attr == cudaFuncAttributeNonPortableClusterSizeAllowed) {
    c.f->nonportable = value != 0;
  } else if (attr != cudaFuncAttributePreferredSharedMemoryCarveout) {
    fake_cuda::violation(s, "%s: cudaFuncSetAttribute(%d) not modelled", c.f->name.c_str(), (int)attr);
    return fake_cuda::ret(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int *blocks, const void *fn,
                                                                   int threads, size_t smem,
                                                                   unsigned int) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  fake_cuda::FuncCall c;
  if (cudaError_t e = fake_cuda::enter_func(s, Api::kOccupancy, fn, &c)) return fake_cuda::ret(e);
  *blocks = fake_cuda::per_sm(s, *c.d, *c.f, *c.k, fake_cuda::t_device, threads, smem);
  return cudaSuccess;
}

// (The library's CUDA code takes the template of cuda_runtime.h, which calls the one above; C++ code
// calls this.)
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *blocks, const void *fn, int threads,
                                                          size_t smem) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(blocks, fn, threads, smem,
                                                                cudaOccupancyDefault);
}

cudaError_t cudaOccupancyMaxActiveClusters(int *clusters, const void *fn,
                                           const cudaLaunchConfig_t *cfg) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  fake_cuda::FuncCall c;
  if (cudaError_t e = fake_cuda::enter_func(s, Api::kOccupancy, fn, &c)) return fake_cuda::ret(e);
  if (!cfg || !clusters) return fake_cuda::ret(cudaErrorInvalidValue);
  if (c.d->major < 9) return fake_cuda::ret(cudaErrorNotSupported);
  unsigned cluster = 1;
  for (unsigned k = 0; k < cfg->numAttrs; ++k)
    if (cfg->attrs[k].id == cudaLaunchAttributeClusterDimension)
      cluster = cfg->attrs[k].val.clusterDim.x;
  if (cluster == 0 || cluster > (c.f->nonportable ? 16u : 8u))
    return fake_cuda::ret(cudaErrorInvalidClusterSize);
  const long long threads = fake_cuda::threads_of(cfg->blockDim);
  *clusters = fake_cuda::per_sm(s, *c.d, *c.f, *c.k, fake_cuda::t_device, threads, cfg->dynamicSmemBytes) *
              c.d->sms / (int)cluster;
  return cudaSuccess;
}

cudaError_t cudaLaunchKernelExC(const cudaLaunchConfig_t *config, const void *fn, void **) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  return fake_cuda::ret(fake_cuda::launch(s, *config, fn));
}


// ---- memory --------------------------------------------------------------------------------------

static cudaError_t allocate(void **p, size_t size, fake_cuda::Kind kind) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  *p = nullptr;
  if (cudaError_t e = fake_cuda::enter(s, Api::kMalloc)) return fake_cuda::ret(e);
  if (kind != fake_cuda::Kind::kPinned)
    if (cudaError_t e = fake_cuda::refused_in_capture(s, "cudaMalloc", false)) return fake_cuda::ret(e);
  if (!fake_cuda::device(s, fake_cuda::t_device)) return fake_cuda::ret(cudaErrorInvalidDevice);
  ++s.n.mallocs;
  void *q = nullptr;
  char *rw = nullptr;
  size_t mapped = 0;
  if (kind == fake_cuda::Kind::kDevice) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    mapped = (std::max<size_t>(size, 1) + page - 1) / page * page;
    const int fd = memfd_create("fake_cuda", MFD_CLOEXEC);
    if (fd >= 0 && ftruncate(fd, (off_t)mapped) == 0) {
      q = mmap(nullptr, mapped, PROT_NONE, MAP_SHARED | MAP_NORESERVE, fd, 0);
      void *w = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
      if (q == MAP_FAILED || w == MAP_FAILED) {
        if (q != MAP_FAILED) munmap(q, mapped);
        if (w != MAP_FAILED) munmap(w, mapped);
        q = nullptr;
      } else {
        rw = (char *)w;
      }
    }
    if (fd >= 0) close(fd);
  } else {
    q = std::aligned_alloc(256, (std::max<size_t>(size, 1) + 255) / 256 * 256);
    rw = (char *)q;
  }
  if (!q) return fake_cuda::ret(cudaErrorMemoryAllocation);
  s.allocs[(uintptr_t)q] =
      fake_cuda::Alloc{size, fake_cuda::t_device, kind, rw, mapped, kind != fake_cuda::Kind::kDevice};
  s.live += size;
  *p = q;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t size) { return allocate(p, size, fake_cuda::Kind::kDevice); }
cudaError_t cudaMallocManaged(void **p, size_t size, unsigned int) {
  return allocate(p, size, fake_cuda::Kind::kManaged);
}
cudaError_t cudaMallocHost(void **p, size_t size) { return allocate(p, size, fake_cuda::Kind::kPinned); }

static cudaError_t release(void *p, bool pinned, const char *what) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  if (cudaError_t e = fake_cuda::enter(s, Api::kFree, what)) {
    // The allocation stays, and is no longer counted: a failed free is not the caller's leak.
    fake_cuda::flush(s, nullptr, true);
    auto it = s.allocs.find((uintptr_t)p);
    if (it != s.allocs.end()) {
      s.live -= it->second.size;
      s.abandoned.insert(*it);
      s.allocs.erase(it);
    }
    return fake_cuda::ret(e);
  }
  if (!p) return cudaSuccess;
  if (cudaError_t e = fake_cuda::refused_in_capture(s, what, false)) return fake_cuda::ret(e);
  auto it = s.allocs.find((uintptr_t)p);
  if (it == s.allocs.end() || (it->second.kind == fake_cuda::Kind::kPinned) != pinned) {
    fake_cuda::violation(s, "%s(%p): not the start of a live allocation of its kind", what, p);
    return fake_cuda::ret(cudaErrorInvalidValue);
  }
  fake_cuda::flush(s, nullptr, true);  // cudaFree waits for the device
  s.legacy_unfinished.erase(fake_cuda::t_device);
  ++s.n.frees;
  s.live -= it->second.size;
  if (it->second.mapped) {
    munmap(p, it->second.mapped);
    munmap(it->second.rw, it->second.mapped);
  } else {
    std::free(p);
  }
  s.allocs.erase(it);
  return cudaSuccess;
}

cudaError_t cudaFree(void *p) { return release(p, false, "cudaFree"); }
cudaError_t cudaFreeHost(void *p) { return release(p, true, "cudaFreeHost"); }

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *attr, const void *p) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  if (cudaError_t e = fake_cuda::enter(s, Api::kPointerAttributes)) return fake_cuda::ret(e);
  *attr = cudaPointerAttributes{};
  uintptr_t base = 0;
  const fake_cuda::Alloc *a = fake_cuda::holding(s, p, 0, &base);
  if (!a || (uintptr_t)p == base + a->size) {  // one past the end belongs to no allocation
    attr->type = cudaMemoryTypeUnregistered;
    attr->device = -2;
    return cudaSuccess;
  }
  attr->type = a->kind == fake_cuda::Kind::kManaged  ? cudaMemoryTypeManaged
               : a->kind == fake_cuda::Kind::kPinned ? cudaMemoryTypeHost
                                                     : cudaMemoryTypeDevice;
  attr->device = a->device;
  attr->devicePointer = const_cast<void *>(p);
  attr->hostPointer = a->kind != fake_cuda::Kind::kDevice ? const_cast<void *>(p) : nullptr;
  return cudaSuccess;
}

// Checks a copy's sides: its device sides in one live allocation, its host sides not in device
// memory; counts it. Violations return an error.
static cudaError_t check_copy(State &s, void *dst, const void *src, size_t n, cudaMemcpyKind kind,
                              const char *what) {
  if (kind != cudaMemcpyHostToDevice && kind != cudaMemcpyDeviceToHost &&
      kind != cudaMemcpyDeviceToDevice) {
    fake_cuda::violation(s, "%s with kind %d", what, (int)kind);
    return cudaErrorInvalidValue;
  }
  const bool dst_dev = kind != cudaMemcpyDeviceToHost, src_dev = kind != cudaMemcpyHostToDevice;
  if (!fake_cuda::reach(s, dst, n, dst_dev) || !fake_cuda::reach(s, src, n, src_dev)) {
    fake_cuda::violation(s, "%s of %zu bytes (%p <- %p, kind %d): a side is not memory of its kind",
                         what, n, dst, src, (int)kind);
    return cudaErrorInvalidValue;
  }
  if (kind == cudaMemcpyDeviceToDevice)
    ++s.n.d2d;
  else
    ++s.n.memcpys;
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  if (cudaError_t e = fake_cuda::enter(s, Api::kMemcpy)) return fake_cuda::ret(e);
  if (cudaError_t e = fake_cuda::refused_in_capture(s, "cudaMemcpy", true)) return fake_cuda::ret(e);
  if (cudaError_t e = check_copy(s, dst, src, n, kind, "cudaMemcpy")) return fake_cuda::ret(e);
  fake_cuda::legacy(s, "cudaMemcpy");
  ++s.n.syncs;
  // The legacy stream: after its own work (the test's stream is non-blocking: not after that).
  s.pending.push_back({nullptr, dst, src, n, kind, {}});
  fake_cuda::flush(s, nullptr, false);
  // To the host, or from pinned memory, it returns when the copy (and the legacy stream's work
  // before it) is done; from pageable memory once the bytes are staged, its DMA maybe still to
  // run; device to device, asynchronously.
  const fake_cuda::Alloc *from = kind == cudaMemcpyHostToDevice ? fake_cuda::holding(s, src, n) : nullptr;
  if (kind == cudaMemcpyDeviceToHost || (from && from->kind == fake_cuda::Kind::kPinned))
    s.legacy_unfinished.erase(fake_cuda::t_device);
  else
    s.legacy_unfinished[fake_cuda::t_device] = kind == cudaMemcpyHostToDevice
                                                   ? "cudaMemcpy from pageable host memory"
                                                   : "cudaMemcpy device to device";
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind,
                            cudaStream_t stream) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  if (cudaError_t e = fake_cuda::enter(s, Api::kMemcpyAsync)) return fake_cuda::ret(e);
  fake_cuda::on_stream(s, stream, "cudaMemcpyAsync");
  fake_cuda::after_legacy(s, stream, "cudaMemcpyAsync");
  if (kind != cudaMemcpyDeviceToDevice && s.capturing && stream == s.capture_stream)
    if (cudaError_t e = fake_cuda::refused_in_capture(s, "cudaMemcpyAsync to or from the host", true))
      return fake_cuda::ret(e);
  if (cudaError_t e = check_copy(s, dst, src, n, kind, "cudaMemcpyAsync")) return fake_cuda::ret(e);
  // Done when the stream is synchronized. From pageable host memory the runtime stages the bytes
  // before it returns (CUDA documents it); to pageable memory it "might" be synchronous: the fake
  // takes the strict reading, as for pinned memory.
  const bool pageable_source = kind == cudaMemcpyHostToDevice && !fake_cuda::holding(s, src, n);
  s.pending.push_back({stream, dst, src, n, kind, {}});
  if (pageable_source) s.pending.back().staged.assign((const char *)src, (const char *)src + n);
  return cudaSuccess;
}

cudaError_t cudaMemset(void *p, int value, size_t n) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  if (cudaError_t e = fake_cuda::enter(s, Api::kMemset)) return fake_cuda::ret(e);
  if (cudaError_t e = fake_cuda::refused_in_capture(s, "cudaMemset", true)) return fake_cuda::ret(e);
  fake_cuda::Alloc *a = fake_cuda::holding(s, p, n);
  char *to = fake_cuda::reach(s, p, n, true);
  if (!a || !to) {
    fake_cuda::violation(s, "cudaMemset of %zu bytes at %p outside device memory", n, p);
    return fake_cuda::ret(cudaErrorInvalidValue);
  }
  fake_cuda::legacy(s, "cudaMemset");
  fake_cuda::flush(s, nullptr, false);
  if (a->kind == fake_cuda::Kind::kDevice)  // of pinned or managed memory: synchronous
    s.legacy_unfinished[fake_cuda::t_device] = "cudaMemset";
  ++s.n.memsets;
  if (a->written || value != 0) std::memset(to, value, n);
  a->written = a->written || value != 0;
  return cudaSuccess;
}

// ---- streams ---------------------------------------------------------------------------------------

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  if (cudaError_t e = fake_cuda::enter(s, Api::kStreamSync)) {
    // The report of an asynchronous error: the stream's work is lost.
    fake_cuda::drop(s, stream);
    return fake_cuda::ret(e);
  }
  fake_cuda::on_stream(s, stream, "cudaStreamSynchronize");
  if (s.capturing && (stream == s.capture_stream || stream == nullptr))
    if (cudaError_t e = fake_cuda::refused_in_capture(s, "cudaStreamSynchronize", true))
      return fake_cuda::ret(e);
  ++s.n.syncs;
  fake_cuda::flush(s, stream, false);
  if (stream == nullptr) s.legacy_unfinished.erase(fake_cuda::t_device);
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, enum cudaStreamCaptureStatus *status) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  if (cudaError_t e = fake_cuda::enter(s, Api::kStreamIsCapturing)) return fake_cuda::ret(e);
  fake_cuda::on_stream(s, stream, "cudaStreamIsCapturing");
  *status = s.capturing && stream == s.capture_stream ? cudaStreamCaptureStatusActive
                                                      : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

cudaError_t cudaThreadExchangeStreamCaptureMode(enum cudaStreamCaptureMode *mode) {
  State &s = st();
  std::lock_guard<std::mutex> g(s.mu);
  if (cudaError_t e = fake_cuda::enter(s, Api::kCaptureMode)) return fake_cuda::ret(e);
  std::swap(*mode, fake_cuda::t_mode);
  return cudaSuccess;
}

}  // extern "C"
