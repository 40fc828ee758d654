// Thread safety on the CPU backend (README, "Reliability"): distinct layers used from many threads
// at once give bitwise the results of serial use, and the last-error message is per thread.
// CI runs this binary under ThreadSanitizer. Sizes: SN_THREADS (8), SN_THREAD_LAYERS (50 per
// thread), SN_THREAD_STEPS (200).
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "test_util.h"

using namespace sntest;

namespace {

int env_int(const char *name, int fallback) {
  const char *s = std::getenv(name);
  return s && *s ? std::atoi(s) : fallback;
}

// A reusable barrier (std::barrier is C++20).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(m_);
    const int gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen != gen_; });
    }
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int n_, count_ = 0, gen_ = 0;
};

// FNV-1a 64 over bytes: a digest of every output a layer produced.
struct Digest {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(const void *p, size_t n) {
    const unsigned char *c = static_cast<const unsigned char *>(p);
    for (size_t k = 0; k < n; ++k) h = (h ^ c[k]) * 0x100000001b3ull;
  }
};

// Everything one layer computed over the run.
struct Result {
  uint64_t outputs = 0;                 // digest of every W_sn, dW and dγ
  std::vector<unsigned char> checkpoint; // the final state
  std::string error;                    // the first failure, if any
};

// The work of layer number `id`, deterministic in `id` alone: its shape, dtype, order and weight
// come from `id`; every `steps` it trains (or evaluates), runs the backward, and every 50 steps
// round-trips its state through a checkpoint into a second layer and back.
Result run_layer_work(int id, int steps) {
  Result r;
  Rng rng(uint64_t(id) * 7919u + 17u);
  const int64_t h = 2 + id % 7, w = 1 + (id / 7) % 6;
  std::vector<int64_t> shape = (id % 4 == 3) ? std::vector<int64_t>{w, h, 2} : std::vector<int64_t>{h, w};
  sn_layer_desc_t d;
  sn_layer_desc_init(&d, int(shape.size()), shape.data());
  d.backend = SN_BACKEND_CPU;
  d.dim = (id % 4 == 3) ? 1 : 0;
  d.dtype = sn_dtype_t(id % 3);
  d.order = sn_order_t((id / 3) % 2);
  d.seed = uint64_t(id);
  d.warmup_iterations = 3;
  d.norm_bound = (id % 5 == 0) ? 0.5f : 0.0f;
  sn_layer_t *l = nullptr, *shadow = nullptr;
  auto fail = [&](const char *what) {
    if (r.error.empty()) r.error = std::string(what) + ": " + sn_last_error_message();
  };
  if (sn_layer_create(&l, &d) != SN_SUCCESS || sn_layer_create(&shadow, &d) != SN_SUCCESS) {
    fail("create");
    sn_layer_destroy(l);
    return r;
  }
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  const size_t es = sn_dtype_size(d.dtype);
  std::vector<float> Wf = rng.normals(n);
  std::vector<unsigned char> W(size_t(n) * es), Wsn(W.size()), G(W.size()), dW(W.size());
  size_t ck = 0;
  sn_layer_checkpoint_size(l, &ck);
  std::vector<unsigned char> blob(ck);
  for (int step = 0; step < steps; ++step) {
    for (int64_t k = 0; k < n; ++k) {
      Wf[size_t(k)] += 0.02f * rng.normal();
      sn_store(W.data(), d.dtype, k, Wf[size_t(k)]);
      sn_store(G.data(), d.dtype, k, rng.normal());
    }
    float dgamma = 0;
    if (sn_forward(l, W.data(), Wsn.data(), step % 4 != 3, nullptr) != SN_SUCCESS) fail("forward");
    if (sn_backward(l, W.data(), G.data(), dW.data(), step % 2 ? unsigned(SN_BACKWARD_ACCUMULATE) : 0u, &dgamma,
                    nullptr) != SN_SUCCESS)
      fail("backward");
    Digest g;
    g.h = r.outputs;
    g.add(Wsn.data(), Wsn.size());
    g.add(dW.data(), dW.size());
    g.add(&dgamma, sizeof dgamma);
    r.outputs = g.h;
    if (step % 50 == 49) {  // through a checkpoint into the shadow layer, and continue with it
      if (sn_layer_save(l, blob.data(), blob.size(), nullptr, nullptr) != SN_SUCCESS) fail("save");
      if (sn_layer_load(shadow, blob.data(), blob.size(), nullptr) != SN_SUCCESS) fail("load");
      std::swap(l, shadow);
    }
  }
  if (sn_layer_save(l, blob.data(), blob.size(), nullptr, nullptr) != SN_SUCCESS) fail("final save");
  r.checkpoint = blob;
  sn_layer_destroy(l);
  sn_layer_destroy(shadow);
  return r;
}

// A layer large enough for the CPU backend to split its products, division and backward over
// threads of its own at the tests' grain (kTestGrain: 2^17 elements a thread, on the thread that
// runs it): `steps` training forwards and backwards (fresh and accumulated), digested.
// Deterministic in `id`.
uint64_t run_large_layer(int id, int steps) {
  const ScopedGrain grain;
  Rng rng(uint64_t(id) * 104729u + 3u);
  const std::vector<int64_t> shape = id % 2 ? std::vector<int64_t>{523, 600} : std::vector<int64_t>{40, 300, 27};
  sn_layer_desc_t d = make_desc(shape, SN_BACKEND_CPU, id % 2 ? 0 : 1);
  d.dtype = id % 3 == 2 ? SN_DTYPE_BFLOAT16 : SN_DTYPE_FLOAT32;
  d.order = sn_order_t(id % 2);
  d.warmup_iterations = 2;
  LayerPtr l(d);
  if (!l.p) return 0;
  const int64_t n = numel_of(shape);
  const size_t bytes = size_t(n) * sn_dtype_size(d.dtype);
  std::vector<unsigned char> W(bytes), Wsn(bytes), G(bytes), dW(bytes);
  Digest g;
  for (int step = 0; step < steps; ++step) {
    for (int64_t k = 0; k < n; ++k) {
      sn_store(W.data(), d.dtype, k, rng.normal());
      sn_store(G.data(), d.dtype, k, rng.normal());
    }
    float dgamma = 0;
    EXPECT_EQ(sn_forward(l, W.data(), Wsn.data(), 1, nullptr), SN_SUCCESS) << sn_last_error_message();
    EXPECT_EQ(sn_backward(l, W.data(), G.data(), dW.data(), step % 2 ? unsigned(SN_BACKWARD_ACCUMULATE) : 0u,
                          &dgamma, nullptr),
              SN_SUCCESS)
        << sn_last_error_message();
    g.add(Wsn.data(), bytes);
    g.add(dW.data(), bytes);
    g.add(&dgamma, sizeof dgamma);
  }
  return g.h;
}


// A CPU group of small layers (below two grains each, so the group spreads them over its threads:
// sn_ref_run_tasks) and one that splits over threads of its own: `steps` grouped training forwards
// and backwards (fresh and accumulated), digested. Deterministic in `id`.
uint64_t run_group_work(int id, int steps) {
  const ScopedGrain grain;  // kTestGrain: its largest member splits, the others are tasks
  Rng rng(uint64_t(id) * 15485863u + 11u);
  const std::vector<std::vector<int64_t>> shapes = {{64, 1000}, {100, 30, 3, 3}, {1, 700}, {300, 217},
                                                    {50, 50, 5, 5}, {523, 600}};
  std::vector<std::unique_ptr<LayerPtr>> layers;
  std::vector<sn_layer_t *> lp;
  std::vector<sn_dtype_t> dts;
  std::vector<std::vector<unsigned char>> W, Wsn, G, dW;
  std::vector<const void *> wp, gp;
  std::vector<void *> op, dp;
  for (size_t k = 0; k < shapes.size(); ++k) {
    sn_layer_desc_t d = make_desc(shapes[k], SN_BACKEND_CPU);
    d.dtype = (k + size_t(id)) % 3 == 2 ? SN_DTYPE_BFLOAT16 : SN_DTYPE_FLOAT32;
    d.seed = uint64_t(id) * 100u + k;
    d.warmup_iterations = 2;
    layers.push_back(std::make_unique<LayerPtr>(d));
    if (!layers.back()->p) return 0;
    lp.push_back(layers.back()->p);
    dts.push_back(d.dtype);
    const size_t bytes = size_t(numel_of(shapes[k])) * sn_dtype_size(d.dtype);
    for (auto *v : {&W, &Wsn, &G, &dW}) v->emplace_back(bytes);
  }
  for (size_t k = 0; k < shapes.size(); ++k) {
    wp.push_back(W[k].data());
    gp.push_back(G[k].data());
    op.push_back(Wsn[k].data());
    dp.push_back(dW[k].data());
  }
  sn_group_t *g = nullptr;
  EXPECT_EQ(sn_group_create(&g, lp.data(), wp.data(), op.data(), int(lp.size())), SN_SUCCESS)
      << sn_last_error_message();
  if (!g) return 0;
  EXPECT_EQ(sn_group_set_gradients(g, gp.data(), dp.data(), nullptr), SN_SUCCESS) << sn_last_error_message();
  Digest dg;
  for (int step = 0; step < steps; ++step) {
    for (size_t k = 0; k < shapes.size(); ++k) {
      const sn_dtype_t dt = dts[k];
      for (int64_t e = 0; e < numel_of(shapes[k]); ++e) {
        sn_store(W[k].data(), dt, e, rng.normal());
        sn_store(G[k].data(), dt, e, rng.normal());
      }
    }
    EXPECT_EQ(sn_group_forward(g, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
    EXPECT_EQ(sn_group_backward(g, step % 2 ? unsigned(SN_BACKWARD_ACCUMULATE) : 0u, nullptr), SN_SUCCESS)
        << sn_last_error_message();
    for (size_t k = 0; k < shapes.size(); ++k) {
      dg.add(Wsn[k].data(), Wsn[k].size());
      dg.add(dW[k].data(), dW[k].size());
    }
  }
  sn_group_destroy(g);
  return dg.h;
}

// work(id, steps) for ids 0 .. n − 1 made with one thread a layer (SPECNORM_CPU_THREADS=1), one after
// another, starting no thread; then on n threads at once with 4 threads a layer: the same digests,
// and the second run split (started threads).
void expect_split_runs_match_serial(int n, int steps, uint64_t (*work)(int, int), const char *what) {
  std::vector<uint64_t> serial(static_cast<size_t>(n)), concurrent(static_cast<size_t>(n));
  {
    ScopedEnv env("SPECNORM_CPU_THREADS", "1");
    const int64_t started = sn_ref_threads_started();
    for (int id = 0; id < n; ++id) serial[size_t(id)] = work(id, steps);
    EXPECT_EQ(sn_ref_threads_started(), started) << "one-thread " << what << "s started threads";
  }
  ScopedEnv env("SPECNORM_CPU_THREADS", "4");
  const int64_t started = sn_ref_threads_started();
  Barrier start(n);
  std::vector<std::thread> pool;
  for (int t = 0; t < n; ++t)
    pool.emplace_back([&, t] {
      start.wait();
      concurrent[size_t(t)] = work(t, steps);
    });
  for (auto &th : pool) th.join();
  EXPECT_GT(sn_ref_threads_started(), started) << "the " << what << "s' calls did not split";
  for (int id = 0; id < n; ++id) {
    EXPECT_NE(serial[size_t(id)], 0u) << what << " " << id;
    EXPECT_EQ(serial[size_t(id)], concurrent[size_t(id)]) << what << " " << id;
  }
}

}  // namespace

// Layers whose calls split over threads of their own (SPECNORM_CPU_THREADS=4), used from 3 threads
// at once: the same bits as each used alone on one thread (SPECNORM_CPU_THREADS=1). Under
// ThreadSanitizer in CI, this covers the reference's threads.
TEST(Threads, LayersSplitOverTheirOwnThreadsMatchSerialBitwise) {
  expect_split_runs_match_serial(3, 3, run_large_layer, "layer");
}

// CPU groups whose small members run as tasks over the group's threads (SPECNORM_CPU_THREADS=4),
// two groups on two threads at once: the same bits as each group of one-thread layers
// (SPECNORM_CPU_THREADS=1), whose members run one after another. Under ThreadSanitizer in CI.
TEST(Threads, GroupsSpreadOverThreadsMatchSerialBitwise) {
  expect_split_runs_match_serial(2, 3, run_group_work, "group");
}

TEST(Threads, DistinctLayersOnManyThreadsMatchSerialBitwise) {
  const int threads = env_int("SN_THREADS", 8), per = env_int("SN_THREAD_LAYERS", 50),
            steps = env_int("SN_THREAD_STEPS", 200);
  const int layers = threads * per;
  // Serial: every layer's work in turn, on this thread.
  std::vector<Result> serial(static_cast<size_t>(layers));
  for (int id = 0; id < layers; ++id) serial[size_t(id)] = run_layer_work(id, steps);

  // Concurrent: thread t runs layers t, t + threads, ... The layers of one thread run one after
  // the other, those of different threads at the same time (creation and destruction included).
  std::vector<Result> concurrent(static_cast<size_t>(layers));
  Barrier start(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      start.wait();
      for (int id = t; id < layers; id += threads) concurrent[size_t(id)] = run_layer_work(id, steps);
    });
  for (auto &th : pool) th.join();

  for (int id = 0; id < layers; ++id) {
    const Result &a = serial[size_t(id)], &b = concurrent[size_t(id)];
    ASSERT_TRUE(a.error.empty()) << "layer " << id << ": " << a.error;
    ASSERT_TRUE(b.error.empty()) << "layer " << id << ": " << b.error;
    EXPECT_EQ(a.outputs, b.outputs) << "layer " << id << ": outputs differ from serial use";
    EXPECT_EQ(a.checkpoint, b.checkpoint) << "layer " << id << ": final state differs from serial use";
  }
}

// Interleaved steps of many layers on many threads: each thread advances all of its layers one
// step at a time, so every thread has many layers alive and in use while the others do the same.
TEST(Threads, InterleavedLayersMatchSerialBitwise) {
  const int threads = env_int("SN_THREADS", 8), per = 8, steps = 60;
  const int64_t h = 9, w = 7;
  auto work = [&](int t, std::vector<std::vector<unsigned char>> &out) {
    std::vector<sn_layer_t *> ls(static_cast<size_t>(per), nullptr);
    for (int k = 0; k < per; ++k) {
      sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CPU);
      d.seed = uint64_t(t * per + k);
      EXPECT_EQ(sn_layer_create(&ls[size_t(k)], &d), SN_SUCCESS);
    }
    Rng rng(uint64_t(t) + 1000u);
    std::vector<float> W = gapped_matrix(rng, h, w), o(W.size());
    for (int s = 0; s < steps; ++s)
      for (int k = 0; k < per; ++k) {
        for (auto &x : W) x += 0.01f * rng.normal();
        EXPECT_EQ(sn_forward(ls[size_t(k)], W.data(), o.data(), 1, nullptr), SN_SUCCESS);
      }
    for (int k = 0; k < per; ++k) {
      size_t n = 0;
      sn_layer_checkpoint_size(ls[size_t(k)], &n);
      out[size_t(t * per + k)].resize(n);
      EXPECT_EQ(sn_layer_save(ls[size_t(k)], out[size_t(t * per + k)].data(), n, nullptr, nullptr), SN_SUCCESS);
      sn_layer_destroy(ls[size_t(k)]);
    }
  };
  std::vector<std::vector<unsigned char>> serial(size_t(threads * per)), concurrent(serial.size());
  for (int t = 0; t < threads; ++t) work(t, serial);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { work(t, concurrent); });
  for (auto &th : pool) th.join();
  for (size_t k = 0; k < serial.size(); ++k) EXPECT_EQ(serial[k], concurrent[k]) << "layer " << k;
}

// sn_last_error_message() is per thread: each thread sees its own failure, whatever the others
// did meanwhile, and successful calls do not clear it.
TEST(Threads, LastErrorMessageIsPerThread) {
  const int threads = env_int("SN_THREADS", 8);
  const int64_t shape[2] = {4, 4};
  sn_layer_desc_t main_desc;
  ASSERT_EQ(sn_layer_desc_init(&main_desc, 2, shape), SN_SUCCESS);
  main_desc.backend = SN_BACKEND_CPU;
  main_desc.n_power_iterations = -99;
  sn_layer_t *l = nullptr;
  ASSERT_EQ(sn_layer_create(&l, &main_desc), SN_ERROR_INVALID_VALUE);
  const std::string main_msg = sn_last_error_message();
  ASSERT_NE(main_msg.find("-99"), std::string::npos) << main_msg;

  Barrier after_fail(threads), after_check(threads);
  std::atomic<int> wrong{0};
  std::vector<std::string> seen(static_cast<size_t>(threads));
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        // A distinct failure per thread and round: dim out of range names the value.
        sn_layer_desc_t d;
        sn_layer_desc_init(&d, 2, shape);
        d.backend = SN_BACKEND_CPU;
        d.dim = 1000 + 100 * t + round;
        sn_layer_t *x = nullptr;
        if (sn_layer_create(&x, &d) != SN_ERROR_INVALID_DIM) wrong++;
        after_fail.wait();  // every thread has now failed with its own message
        // A successful call does not clear it.
        d.dim = 0;
        if (sn_layer_create(&x, &d) != SN_SUCCESS) wrong++;
        sn_layer_destroy(x);
        const std::string msg = sn_last_error_message();
        if (msg.find("desc->dim = " + std::to_string(1000 + 100 * t + round)) == std::string::npos ||
            msg.rfind("SN_ERROR_INVALID_DIM", 0) != 0) {
          wrong++;
          seen[size_t(t)] = msg;
        }
        after_check.wait();
      }
    });
  for (auto &th : pool) th.join();
  EXPECT_EQ(wrong.load(), 0);
  for (int t = 0; t < threads; ++t) EXPECT_TRUE(seen[size_t(t)].empty()) << "thread " << t << ": " << seen[size_t(t)];
  EXPECT_EQ(main_msg, sn_last_error_message()) << "other threads' failures do not touch this thread's";
}
