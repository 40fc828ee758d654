// The emulator's execution of a launch (emu.h): blocks, their threads as fibers, barriers,
// shuffles, grid and cluster barriers, distributed shared memory.
#include "emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

thread_local uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;

// Fiber switch (x86-64 System V): saves the callee-saved registers on the current stack, stores
// the stack pointer in *save and continues on `to` (a stack this function saved, or a new one
// prepared by new_stack()).
#if defined(__x86_64__)
asm(".text\n"
    ".p2align 4\n"
    ".type sn_emu_switch,@function\n"
    "sn_emu_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size sn_emu_switch, .-sn_emu_switch\n");
extern "C" void sn_emu_switch(void **save, void *to);
#else
#error "the CUDA emulator's fiber switch is written for x86-64"
#endif

namespace emu {

thread_local ThreadCtx *t_current = nullptr;
thread_local char tls_anchor;  // every thread_local of the program sits at a fixed offset from it

namespace {

constexpr size_t kStackBytes = 128 * 1024;  // per CUDA thread
constexpr size_t kSharedBytes = 232448;     // the largest dynamic shared memory a block may ask
constexpr auto kNoProgressLimit = std::chrono::seconds(30);

alignas(128) thread_local unsigned char t_dynamic_shared[kSharedBytes];

enum class Wait { kNone, kBarrier, kWarp, kGrid, kCluster };

struct Launch;
struct Block;

struct Fiber {
  ThreadCtx ctx{};
  void *sp = nullptr;
  char *stack = nullptr;
  bool done = false;
  Wait wait = Wait::kNone;
  uint64_t gen = 0;          // the generation of the barrier waited on
  uint64_t cluster_gen = 0;  // the cluster barrier's generation at this thread's arrival
  bool cluster_arrived = false;
};

struct Warp {
  unsigned count = 0;
  uint64_t gen = 0;
  uint64_t slot[2][32] = {};
};

// Wakes the OS threads of a launch whose blocks wait on other blocks (a barrier moved on).
struct Notifier {
  std::mutex m;
  std::condition_variable cv;
  void bump() { cv.notify_all(); }
  void wait() {  // until bumped, or briefly (a bump between the check and this wait is not lost for long)
    std::unique_lock<std::mutex> lock(m);
    cv.wait_for(lock, std::chrono::microseconds(500));
  }
};

// A barrier of threads in several blocks (the grid's, a cluster's): the generation moves on when
// every thread taking part has arrived (a cluster's threads stop taking part when they end; the
// grid's barrier is broken instead, fiber_main).
struct CrossBarrier {
  Notifier *notify = nullptr;
  std::mutex m;
  uint64_t count = 0, expected = 0;
  bool broken = false;  // the grid's: a thread has ended
  std::atomic<uint64_t> gen{0};
  uint64_t arrive() {
    std::lock_guard<std::mutex> lock(m);
    const uint64_t g = gen.load();
    ++count;
    release_if_complete();
    return g;
  }
  void leave() {  // a thread ended: it no longer takes part
    std::lock_guard<std::mutex> lock(m);
    --expected;
    release_if_complete();
  }
  void release_if_complete() {  // (m held)
    if (count > 0 && count == expected) {
      count = 0;
      gen.store(gen.load() + 1);
      notify->bump();
    }
  }
};

struct Cluster {
  CrossBarrier barrier;
  std::vector<std::atomic<char *>> anchors;  // each block's tls_anchor, by rank
  std::atomic<unsigned> ended{0};
  explicit Cluster(unsigned blocks) : anchors(blocks) {
    for (auto &a : anchors) a.store(nullptr);
  }
};

struct Launch {
  const cudaLaunchConfig_t *cfg;
  const std::function<void()> *body;
  const char *name;
  unsigned threads;       // per block
  unsigned cluster_size;  // blocks per cluster (1: none)
  bool cooperative;
  Notifier notifier;
  CrossBarrier grid;
  std::vector<std::unique_ptr<Cluster>> clusters;
  std::atomic<bool> failed{false};
  std::atomic<uint64_t> progress{0};  // passes in which some block's thread ran
  std::mutex fault_m;
  std::string fault;
  void fail(const std::string &why) {
    std::lock_guard<std::mutex> lock(fault_m);
    if (!failed.exchange(true)) fault = why;
  }
};

struct Block {
  Launch *launch;
  unsigned index;  // linear block index
  uint3 idx;
  Cluster *cluster = nullptr;
  unsigned rank = 0;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  unsigned exited = 0, bar_count = 0;
  uint64_t bar_gen = 0;
  void *sched_sp = nullptr;
  Fiber *cur = nullptr;
  // __syncthreads completes when every thread has arrived or ended.
  bool release_barrier_if_complete() {
    if (bar_count == 0 || bar_count + exited != fibers.size()) return false;
    bar_count = 0;
    ++bar_gen;
    return true;
  }
};

thread_local Block *t_block = nullptr;

// The stacks of this OS thread's fibers: one mapping for a block's threads (a mapping per stack
// would run into the kernel's limit on mappings with many blocks at once), kept for its next
// blocks. No guard pages (they split the mapping): a canary at each stack's bottom, checked when
// the block ends.
constexpr uint64_t kCanary = 0x5eedfacecafef00dull;
struct StackPool {
  char *base = nullptr;
  size_t count = 0;
  ~StackPool() {
    if (base) munmap(base, count * kStackBytes);
  }
  // Room for n stacks; stack i starts at the returned pointer + i * kStackBytes.
  char *reserve(size_t n) {
    if (n > count) {
      if (base) munmap(base, count * kStackBytes);
      void *m = mmap(nullptr, n * kStackBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      base = m == MAP_FAILED ? nullptr : static_cast<char *>(m);
      count = base ? n : 0;
    }
    return base;
  }
};
thread_local StackPool t_stacks;

Fiber &me() { return *t_block->cur; }

bool ready(const Block &b, const Fiber &f);

// Runs fiber f of block b from where it stopped; the running context (the scheduler's or a
// fiber's) is saved in *save.
void resume(Block &b, Fiber &f, void **save) {
  f.wait = Wait::kNone;
  b.cur = &f;
  t_current = &f.ctx;
  threadIdx = f.ctx.thread_idx;
  sn_emu_switch(save, f.sp);
}

// The calling fiber stops: the next lane of its warp that can go on runs (no turn through the
// scheduler: a warp's shuffles cost one switch a lane), else the scheduler.
void yield() {
  Block &b = *t_block;
  Fiber &f = *b.cur;
  if (!b.launch->failed.load()) {
    const unsigned n = (unsigned)b.fibers.size(), first = f.ctx.linear & ~31u;
    for (unsigned k = 1; k < 32; ++k) {
      const unsigned t = first + ((f.ctx.linear - first + k) & 31u);
      if (t >= n) continue;
      Fiber &g = b.fibers[t];
      if (g.done || !g.stack || !ready(b, g)) continue;
      resume(b, g, &f.sp);
      return;
    }
  }
  sn_emu_switch(&f.sp, b.sched_sp);
}

void wait_for(Wait kind, uint64_t gen) {
  Fiber &f = me();
  f.wait = kind;
  f.gen = gen;
  yield();
}

void fiber_main() {
  Block &b = *t_block;
  (*b.launch->body)();
  Fiber &f = me();
  f.done = true;
  ++b.exited;
  b.release_barrier_if_complete();
  if (b.launch->cooperative) {
    // A grid barrier needs every thread of the grid (cooperative groups' rule; the hardware hangs
    // when a block's thread 0 has ended): after an end, no thread may wait at one or arrive.
    Launch &L = *b.launch;
    std::lock_guard<std::mutex> lock(L.grid.m);
    L.grid.broken = true;
    if (L.grid.count > 0) L.fail(std::string(L.name) + ": a thread ended while others wait at a grid barrier");
  }
  if (b.cluster) b.cluster->barrier.leave();
  sn_emu_switch(&f.sp, b.sched_sp);
  __builtin_unreachable();
}

void *new_stack(char *stack, unsigned t) {
  // Stack tops staggered by 64 bytes a thread over 4 KB: equal strides would put every fiber's
  // frames in the same cache sets.
  uintptr_t top = reinterpret_cast<uintptr_t>(stack + kStackBytes - 64 * (t % 64)) & ~uintptr_t{15};
  void **sp = reinterpret_cast<void **>(top);
  *--sp = nullptr;                                   // fiber_main's return address (never used)
  *--sp = reinterpret_cast<void *>(&fiber_main);     // where the switch returns to
  for (int i = 0; i < 6; ++i) *--sp = nullptr;       // rbp, rbx, r12-r15
  return sp;
}

bool ready(const Block &b, const Fiber &f) {
  switch (f.wait) {
    case Wait::kNone: return true;
    case Wait::kBarrier: return b.bar_gen != f.gen;
    case Wait::kWarp: return b.warps[f.ctx.linear / 32].gen != f.gen;
    case Wait::kGrid: return b.launch->grid.gen.load() != f.gen;
    case Wait::kCluster: return b.cluster->barrier.gen.load() != f.gen;
  }
  return false;
}

const char *wait_name(Wait w) {
  switch (w) {
    case Wait::kNone: return "running";
    case Wait::kBarrier: return "__syncthreads";
    case Wait::kWarp: return "a warp shuffle or __syncwarp";
    case Wait::kGrid: return "a grid barrier";
    case Wait::kCluster: return "a cluster barrier";
  }
  return "?";
}

// Runs block `index` of the launch on this OS thread.
void run_block(Launch &L, unsigned index) {
  const cudaLaunchConfig_t &cfg = *L.cfg;
  Block b;
  b.launch = &L;
  b.index = index;
  b.idx = uint3{index % cfg.gridDim.x, index / cfg.gridDim.x % cfg.gridDim.y,
                index / (cfg.gridDim.x * cfg.gridDim.y)};
  if (L.cluster_size > 1) {
    b.cluster = L.clusters[index / L.cluster_size].get();
    b.rank = index % L.cluster_size;
    b.cluster->anchors[b.rank].store(&tls_anchor);
    for (auto &a : b.cluster->anchors)  // every peer's shared memory is known before a thread runs
      while (!a.load() && !L.failed.load()) std::this_thread::yield();
  }
  // NaN: shared memory never written in this block, dynamic or static.
  std::memset(t_dynamic_shared, 0xff, cfg.dynamicSmemBytes);
  for (const auto &v : static_shared()) std::memset(&tls_anchor + v.first, 0xff, v.second);
  const dim3 bd = cfg.blockDim;
  char *const stacks = t_stacks.reserve(L.threads);
  b.fibers.resize(L.threads);
  b.warps.resize((L.threads + 31) / 32);
  for (unsigned t = 0; t < L.threads; ++t) {
    Fiber &f = b.fibers[t];
    f.ctx.thread_idx = uint3{t % bd.x, t / bd.x % bd.y, t / (bd.x * bd.y)};
    f.ctx.linear = t;
    f.stack = stacks ? stacks + (size_t)t * kStackBytes : nullptr;
    if (!f.stack) {
      L.fail("no memory for the threads' stacks");
      break;
    }
    std::memcpy(f.stack, &kCanary, sizeof kCanary);
    f.sp = new_stack(f.stack, t);
  }
  Block *outer = t_block;
  t_block = &b;
  blockIdx = b.idx;
  blockDim = bd;
  gridDim = cfg.gridDim;
  auto last_progress = std::chrono::steady_clock::now();
  uint64_t seen_progress = L.progress.load();
  // Warp by warp: a warp's lanes run until none can go on (they all wait at a block-wide or wider
  // barrier, or ended), so a shuffle costs a turn of its warp, not of the block.
  // The warps' order turns every pass and from one block to the next (odd blocks start from the
  // last warp): a read of what another warp writes, without a barrier between, finds memory not
  // yet written in one block or another, whichever warp writes.
  const unsigned nwarps = (unsigned)b.warps.size();
  for (unsigned pass = index & 1u; b.exited < L.threads && !L.failed.load(); ++pass) {
    bool progressed = false, across = false;
    for (unsigned k = 0; k < nwarps && !L.failed.load(); ++k) {
      const unsigned w = pass & 1u ? nwarps - 1 - k : k;
      const unsigned first = w * 32, last = std::min(first + 32, L.threads);
      for (bool again = true; again && !L.failed.load();) {
        again = false;
        for (unsigned t = first; t < last; ++t) {
          Fiber &f = b.fibers[t];
          if (f.done || !f.stack || !ready(b, f)) continue;
          resume(b, f, &b.sched_sp);
          progressed = again = true;
          if (L.failed.load()) break;
        }
      }
      for (unsigned t = first; t < last; ++t) {
        const Fiber &f = b.fibers[t];
        across = across || (!f.done && (f.wait == Wait::kGrid || f.wait == Wait::kCluster));
      }
    }
    // A block whose threads all wait on other blocks waits for them; it has deadlocked when no
    // block of the launch has gone on for kNoProgressLimit (or at once, when none of its threads
    // waits on another block).
    const auto now = std::chrono::steady_clock::now();
    const uint64_t launch_progress = progressed ? L.progress.fetch_add(1) + 1 : L.progress.load();
    if (launch_progress != seen_progress) {
      seen_progress = launch_progress;
      last_progress = now;
      if (progressed) continue;
    }
    if (!across || now - last_progress > kNoProgressLimit) {
      std::string why = std::string(L.name) + ": block " + std::to_string(index) +
                        " cannot go on (deadlock):";
      for (const Fiber &f : b.fibers)
        if (!f.done) {
          why += " thread " + std::to_string(f.ctx.linear) + " waits in " + wait_name(f.wait);
          break;
        }
      L.fail(why);
      break;
    }
    L.notifier.wait();
  }
  if (b.cluster) {
    // A peer reading this block's shared memory after it ended reads NaN; the OS thread (and its
    // thread_local shared memory) stays until the whole cluster has ended.
    std::memset(t_dynamic_shared, 0xff, cfg.dynamicSmemBytes);
    b.cluster->ended.fetch_add(1);
    while (b.cluster->ended.load() < L.cluster_size && !L.failed.load())
      std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  for (Fiber &f : b.fibers)
    if (f.stack && std::memcmp(f.stack, &kCanary, sizeof kCanary) != 0) {
      L.fail(std::string(L.name) + ": a thread overflowed its emulated stack");
      break;
    }
  t_block = outer;
  t_current = nullptr;
}

}  // namespace


void *dynamic_shared() { return t_dynamic_shared; }

void syncthreads() {
  Block &b = *t_block;
  const uint64_t g = b.bar_gen;
  ++b.bar_count;
  if (!b.release_barrier_if_complete()) wait_for(Wait::kBarrier, g);
}

// The lanes of `mask` in the calling thread's warp meet; each has stored `value` in its slot.
uint64_t exchange(unsigned mask, uint64_t value, int src_lane) {
  Block &b = *t_block;
  Fiber &f = me();
  Warp &w = b.warps[f.ctx.linear / 32];
  const unsigned lane = f.ctx.linear % 32;
  const unsigned first = f.ctx.linear - lane;
  const unsigned n = (unsigned)b.fibers.size();
  const unsigned present = first + 32 <= n ? ~0u : (1u << (n - first)) - 1u;  // a partial last warp
  const unsigned lanes = mask == ~0u && present == ~0u ? 32u : (unsigned)__builtin_popcount(mask & present);
  if (!(mask >> lane & 1u)) {
    b.launch->fail(std::string(b.launch->name) + ": a shuffle's mask leaves out its own lane");
    yield();
  }
  // Two sets of slots, used in turn: a lane writes a set again only two shuffles later, after a
  // meeting that every lane reached once done reading it.
  uint64_t *slots = w.slot[w.gen & 1];
  slots[lane] = value;
  const uint64_t g = w.gen;
  if (++w.count == lanes) {
    w.count = 0;
    ++w.gen;
  } else {
    wait_for(Wait::kWarp, g);
  }
  return slots[src_lane & 31];
}

void syncwarp(unsigned mask) { (void)exchange(mask, 0, (int)(me().ctx.linear % 32)); }

void grid_sync() {
  Block &b = *t_block;
  if (!b.launch->cooperative) {
    b.launch->fail(std::string(b.launch->name) + ": a grid barrier in a launch that is not cooperative");
    yield();
  }
  {
    std::lock_guard<std::mutex> lock(b.launch->grid.m);
    if (b.launch->grid.broken) {
      b.launch->fail(std::string(b.launch->name) + ": a grid barrier that a thread which has ended never reaches");
      yield();
    }
  }
  wait_for(Wait::kGrid, b.launch->grid.arrive());
}

void cluster_arrive() {
  Block &b = *t_block;
  Fiber &f = me();
  if (!b.cluster) return;  // a block of no cluster is its own
  if (f.cluster_arrived) {
    b.launch->fail(std::string(b.launch->name) + ": two cluster arrivals without a wait");
    yield();
  }
  f.cluster_gen = b.cluster->barrier.arrive();
  f.cluster_arrived = true;
}

void cluster_wait() {
  Block &b = *t_block;
  Fiber &f = me();
  if (!b.cluster) {
    syncthreads();
    return;
  }
  if (!f.cluster_arrived) {
    b.launch->fail(std::string(b.launch->name) + ": a cluster wait without an arrival");
    yield();
  }
  f.cluster_arrived = false;
  if (b.cluster->barrier.gen.load() == f.cluster_gen) wait_for(Wait::kCluster, f.cluster_gen);
}

unsigned cluster_rank() { return t_block->rank; }
unsigned cluster_blocks() { return t_block->launch->cluster_size; }

void *cluster_peer(const void *p, unsigned rank) {
  Block &b = *t_block;
  if (!b.cluster) {
    if (rank != 0) {
      b.launch->fail(std::string(b.launch->name) + ": a peer block outside any cluster");
      yield();
    }
    return const_cast<void *>(p);
  }
  if (rank >= b.launch->cluster_size) {
    b.launch->fail(std::string(b.launch->name) + ": cluster rank " + std::to_string(rank) + " out of range");
    yield();
  }
  const char *mine = &tls_anchor;
  const intptr_t off = static_cast<const char *>(p) - mine;
  return b.cluster->anchors[rank].load() + off;
}

void trap() {
  Block &b = *t_block;
  b.launch->fail(std::string(b.launch->name) + ": __trap() in block " + std::to_string(b.index) +
                 ", thread " + std::to_string(me().ctx.linear));
  me().done = true;  // never resumed
  for (;;) yield();
}

namespace {
thread_local std::string t_fault;
}

std::string last_fault() { return t_fault; }

cudaError_t run(const cudaLaunchConfig_t &cfg, const std::function<void()> &body, const char *name) {
  Launch L;
  L.cfg = &cfg;
  L.body = &body;
  L.name = name;
  L.threads = cfg.blockDim.x * cfg.blockDim.y * cfg.blockDim.z;
  const LaunchAttrs attrs = launch_attrs(cfg);  // (checked by submit(): clusters of x blocks, at most 8)
  L.cooperative = attrs.cooperative;
  L.cluster_size = attrs.cluster.x;
  const unsigned blocks = cfg.gridDim.x * cfg.gridDim.y * cfg.gridDim.z;
  L.grid.notify = &L.notifier;
  if (L.cooperative) L.grid.expected = (uint64_t)blocks * L.threads;
  if (L.cluster_size > 1) {
    for (unsigned c = 0; c < blocks / L.cluster_size; ++c) {
      L.clusters.push_back(std::make_unique<Cluster>(L.cluster_size));
      L.clusters.back()->barrier.expected = (uint64_t)L.cluster_size * L.threads;
      L.clusters.back()->barrier.notify = &L.notifier;
    }
  }
  t_fault.clear();
  // Blocks that run one after another (or a cluster after another) go in index order in one
  // launch and in reverse order in the next: no kernel may count on an order, and a block that
  // reads what a later block writes (a missing fence, a partial read too early) meets it unwritten.
  static std::atomic<unsigned> launches{0};
  const bool reverse = launches.fetch_add(1) & 1u;
  if (L.cooperative) {  // every block at once
    std::vector<std::thread> ts;
    for (unsigned i = 0; i < blocks; ++i) ts.emplace_back([&L, i] { run_block(L, i); });
    for (auto &t : ts) t.join();
  } else if (L.cluster_size > 1) {  // a cluster at a time, its blocks at once
    for (unsigned k = 0; k < blocks / L.cluster_size && !L.failed.load(); ++k) {
      const unsigned c = reverse ? blocks / L.cluster_size - 1 - k : k;
      std::vector<std::thread> ts;
      for (unsigned r = 0; r < L.cluster_size; ++r)
        ts.emplace_back([&L, c, r] { run_block(L, c * L.cluster_size + r); });
      for (auto &t : ts) t.join();
    }
  } else {  // one block after another on this thread
    for (unsigned k = 0; k < blocks && !L.failed.load(); ++k) run_block(L, reverse ? blocks - 1 - k : k);
  }
  if (L.failed.load()) {
    t_fault = L.fault;
    return cudaErrorLaunchFailure;
  }
  return cudaSuccess;
}

}  // namespace emu
