// Long-run and resource tests of CUDA layers: a soak of 100,000 training steps (u and v stay unit
// norm, σ stays stable, no device memory growth), and device-memory exhaustion at creation
// (a specific status, nothing leaked). Skip with a message without a GPU.
#include <cuda_runtime.h>

#include <thread>

#include "test_util.h"

using namespace sntest;

namespace {


size_t free_device_bytes() {
  size_t f = 0, t = 0;
  EXPECT_EQ(cudaMemGetInfo(&f, &t), cudaSuccess);
  return f;
}

double norm(const std::vector<float> &x) {
  double s = 0;
  for (float e : x) s += double(e) * e;
  return std::sqrt(s);
}

}  // namespace

TEST(GpuSoak, HundredThousandStepsStayUnitNormAndStable) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  const int64_t h = 48, w = 40;
  const int steps = 100000;
  std::vector<float> W = gapped_matrix(rng, h, w);
  float *dW = nullptr, *dOut = nullptr;
  ASSERT_EQ(cudaMalloc(&dW, h * w * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dOut, h * w * 4), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dW, W.data(), h * w * 4, cudaMemcpyHostToDevice), cudaSuccess);
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  // The driver keeps memory of its own after the first graph is instantiated (2 MiB on an H100,
  // whoever made the graph): take the baseline after one short round of the same work.
  {
    LayerPtr l(make_desc({h, w}, SN_BACKEND_CUDA));
    ASSERT_EQ(sn_forward(l, dW, dOut, 1, s), SN_SUCCESS);
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
    ASSERT_EQ(sn_forward(l, dW, dOut, 1, s), SN_SUCCESS);
    ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
    ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
  const size_t free_before = free_device_bytes();
  {
    LayerPtr l(make_desc({h, w}, SN_BACKEND_CUDA));
    ASSERT_EQ(sn_forward(l, dW, dOut, 1, s), SN_SUCCESS);
    // One graph of 100 steps, replayed: the training loop as a user would capture it.
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
    for (int k = 0; k < 100; ++k) ASSERT_EQ(sn_forward(l, dW, dOut, 1, s), SN_SUCCESS);
    ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
    ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    const float sigma0 = get_state(l, s).sigma;
    for (int done = 0; done < steps; done += 100) {
      ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
      if ((done / 100) % 100 == 99) {  // every 10,000 steps
        const State st = get_state(l, s);
        ASSERT_NEAR(norm(st.u), 1.0, 1e-6) << done;
        ASSERT_NEAR(norm(st.v), 1.0, 1e-6) << done;
        ASSERT_NEAR(st.sigma / sigma0, 1.0, 1e-5) << "a fixed W: σ stays put";
        uint32_t health = 0;
        ASSERT_EQ(sn_layer_get_health(l, &health, 0, s), SN_SUCCESS);
        ASSERT_EQ(health, 0u);
      }
    }
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
  // Free memory may grow (the driver returns reservations of its own in 2 MiB steps) but must
  // not shrink: that would be a leak.
  EXPECT_GE(free_device_bytes(), free_before) << "device memory returned after destroy";
  cudaStreamDestroy(s);
  cudaFree(dW);
  cudaFree(dOut);
}

TEST(GpuSoak, CreateDestroyLeaksNothing) {
  REQUIRE_GPU();
  const size_t before = free_device_bytes();
  for (int k = 0; k < 2000; ++k) {
    LayerPtr l(make_desc({int64_t(1 + k % 97), int64_t(3 + k % 61)}, SN_BACKEND_CUDA));
    ASSERT_TRUE(l.p);
  }
  EXPECT_GE(free_device_bytes(), before) << "free memory must not shrink";
}

TEST(GpuSoak, DeviceMemoryExhaustionIsAnAllocationStatus) {
  REQUIRE_GPU();
  size_t f = 0, t = 0;
  ASSERT_EQ(cudaMemGetInfo(&f, &t), cudaSuccess);
  // A layer whose u, v and scratch alone need more than the whole card (4 floats per row at least).
  const int64_t rows = int64_t(t / 4) + (int64_t(1) << 28);
  const size_t before = free_device_bytes();
  sn_layer_t *l = reinterpret_cast<sn_layer_t *>(0x1);
  sn_layer_desc_t d = make_desc({rows, 1}, SN_BACKEND_CUDA);
  EXPECT_EQ(sn_layer_create(&l, &d), SN_ERROR_ALLOCATION) << sn_last_error_message();
  EXPECT_EQ(l, nullptr);
  EXPECT_GE(free_device_bytes(), before) << "nothing leaked by the failed creation";
  // The device is still usable.
  LayerPtr ok(make_desc({8, 8}, SN_BACKEND_CUDA));
  EXPECT_TRUE(ok.p);
}

// Distinct layers used at the same time from several host threads, each on its own stream, give
// bitwise the results of serial use.
TEST(GpuSoak, ConcurrentLayersOnThreadsAndStreamsEqualSerial) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  const int threads = 4, per_thread = 3, steps = 50;
  const int64_t h = 256, w = 384;
  const std::vector<float> W = gapped_matrix(rng, h, w);
  float *dW = nullptr;
  ASSERT_EQ(cudaMalloc(&dW, h * w * 4), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dW, W.data(), h * w * 4, cudaMemcpyHostToDevice), cudaSuccess);
  auto run = [&](int t, int k, cudaStream_t s, float *out, State *result) {
    sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CUDA);
    d.seed = uint64_t(t * 100 + k);
    LayerPtr l(d);
    for (int step = 0; step < steps; ++step) ASSERT_EQ(sn_forward(l, dW, out, step % 5 != 4, s), SN_SUCCESS);
    *result = get_state(l, s);
  };
  std::vector<State> serial(threads * per_thread), parallel(threads * per_thread);
  std::vector<float *> outs(threads);
  for (auto &o : outs) ASSERT_EQ(cudaMalloc(&o, h * w * 4), cudaSuccess);
  for (int t = 0; t < threads; ++t)
    for (int k = 0; k < per_thread; ++k) run(t, k, nullptr, outs[t], &serial[t * per_thread + k]);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      cudaStream_t s;
      ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
      for (int k = 0; k < per_thread; ++k) run(t, k, s, outs[t], &parallel[t * per_thread + k]);
      cudaStreamDestroy(s);
    });
  for (auto &th : pool) th.join();
  for (size_t k = 0; k < serial.size(); ++k) EXPECT_TRUE(same_state(serial[k], parallel[k])) << k;
  for (auto &o : outs) cudaFree(o);
  cudaFree(dW);
}
