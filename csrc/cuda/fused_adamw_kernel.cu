// CUDA multi-tensor AdamW: one launch updates up to kMaxTensors tensors (kMaxBlocks chunks), with
// the tensor list carried in the kernel's parameter space (as in apex's multi_tensor_apply). Each
// thread moves 8 elements per iteration with 16-byte loads/stores (one uint4 of 16-bit data, two
// float4 of fp32), computes in fp32 with the element math shared with the CPU kernels
// (../adamw_math.h), and falls back to scalar accesses for unaligned tensors and tails.
// No torch headers: this file builds with a bare nvcc (tests/csrc/test_cuda_compiles.py).
// Build with --fmad=false (setup.py) so results match the CPU kernels bit for bit.
#include "../adamw_math.h"
#include "fused_adamw_kernel.h"

namespace frontier {
namespace cuda {
namespace {

constexpr int kMaxTensors = 24;   // slots per launch: the batch must fit the 4 KB parameter space
constexpr int kMaxBlocks = 320;   // chunks per launch
constexpr int kChunk = 1 << 16;   // elements per block
constexpr int kThreads = 512;
constexpr int kVec = 8;           // elements per thread per iteration
constexpr int kMaxSteps = 256;    // step tensors per increment launch

struct BlockMap {
  unsigned char slot[kMaxBlocks];
  int chunk[kMaxBlocks];
};

struct AdamwBatch {
  void* param[kMaxTensors];
  const void* grad[kMaxTensors];
  void* exp_avg[kMaxTensors];
  void* exp_avg_sq[kMaxTensors];
  void* copy[kMaxTensors];
  float* step[kMaxTensors];
  int64_t numel[kMaxTensors];
  int index[kMaxTensors];  // position in the op's list: keys the stochastic rounding like the CPU
  BlockMap blocks;
};

struct CheckBatch {
  const void* data[kMaxTensors];
  int64_t numel[kMaxTensors];
  BlockMap blocks;
};

struct StepBatch {
  float* step[kMaxSteps];
  int count;
};

// ---- 8-element vector loads / stores ----------------------------------------------------------

__device__ __forceinline__ void unpack8(uint4 u, uint16_t* h) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    h[2 * k] = static_cast<uint16_t>(w[k] & 0xFFFFu);
    h[2 * k + 1] = static_cast<uint16_t>(w[k] >> 16);
  }
}

__device__ __forceinline__ uint4 pack8(const uint16_t* h) {
  uint32_t w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    w[k] = static_cast<uint32_t>(h[2 * k]) | (static_cast<uint32_t>(h[2 * k + 1]) << 16);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

__device__ __forceinline__ void load8(const float* p, float* x) {
  const float4 a = reinterpret_cast<const float4*>(p)[0];
  const float4 b = reinterpret_cast<const float4*>(p)[1];
  x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}

template <class T>  // bf16 / f16
__device__ __forceinline__ void load8(const T* p, float* x) {
  uint16_t h[8];
  unpack8(*reinterpret_cast<const uint4*>(p), h);
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const T bits{h[k]};
    x[k] = load_f32(&bits);
  }
}

__device__ __forceinline__ void store8(float* p, const float* x) {
  reinterpret_cast<float4*>(p)[0] = make_float4(x[0], x[1], x[2], x[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(x[4], x[5], x[6], x[7]);
}

__device__ __forceinline__ void store8(bf16* p, const uint16_t* h) { *reinterpret_cast<uint4*>(p) = pack8(h); }

__device__ __forceinline__ void store_rne8(float* p, const float* x) { store8(p, x); }

__device__ __forceinline__ void store_rne8(bf16* p, const float* x) {
  uint16_t h[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    h[k] = bf16_rne_bits(x[k]);
  }
  store8(p, h);
}

__device__ __forceinline__ void store_states8(float* m, float* v, const float* mx, const float* vx, uint32_t,
                                              uint32_t) {
  store8(m, mx);
  store8(v, vx);
}

__device__ __forceinline__ void store_states8(bf16* m, bf16* v, const float* mx, const float* vx, uint32_t key,
                                              uint32_t index) {
  uint16_t hm[8], hv[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const uint32_t r = sr_random(key, index + k);
    hm[k] = bf16_sr_bits(mx[k], r & 0xFFFFu);
    hv[k] = bf16_sr_bits(vx[k], r >> 16);
  }
  store8(m, hm);
  store8(v, hv);
}

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---- kernels ----------------------------------------------------------------------------------

template <class P, class G, class S, bool kCopy>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(AdamwBatch batch, AdamwHyper hyper, const float* grad_scale, const float* found_inf, uint64_t seed) {
  if (*found_inf != 0.0f) {
    return;
  }
  const int slot = batch.blocks.slot[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(batch.blocks.chunk[blockIdx.x]) * kChunk;
  const int64_t end = min(batch.numel[slot], begin + kChunk);
  P* p = static_cast<P*>(batch.param[slot]);
  const G* g = static_cast<const G*>(batch.grad[slot]);
  S* m = static_cast<S*>(batch.exp_avg[slot]);
  S* v = static_cast<S*>(batch.exp_avg_sq[slot]);
  bf16* copy = static_cast<bf16*>(batch.copy[slot]);
  // steps are incremented by a later launch, so every block reads the step before this update
  const float step = *batch.step[slot] + 1.0f;
  const AdamwCoeffs c = adamw_coeffs(hyper, step);
  const uint32_t key = sr_key(seed, static_cast<uint32_t>(batch.index[slot]), static_cast<uint32_t>(step));
  const float scale = *grad_scale;

  int64_t vec_end = begin;
  if (aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v) && (!kCopy || aligned16(copy))) {
    vec_end = begin + (end - begin) / kVec * kVec;
    for (int64_t i = begin + threadIdx.x * kVec; i < vec_end; i += kThreads * kVec) {
      float gx[kVec], px[kVec], mx[kVec], vx[kVec];
      load8(g + i, gx);
      load8(p + i, px);
      load8(m + i, mx);
      load8(v + i, vx);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        adamw_element(c, gx[k] * scale, px[k], mx[k], vx[k]);
      }
      store_rne8(p + i, px);
      store_states8(m + i, v + i, mx, vx, key, static_cast<uint32_t>(i));
      if (kCopy) {
        store_rne8(copy + i, px);
      }
    }
  }
  for (int64_t i = vec_end + threadIdx.x; i < end; i += kThreads) {
    float pi = load_f32(p + i), mi = load_f32(m + i), vi = load_f32(v + i);
    adamw_element(c, load_f32(g + i) * scale, pi, mi, vi);
    store_rne(p + i, pi);
    store_states(m + i, v + i, mi, vi, key, static_cast<uint32_t>(i));
    if (kCopy) {
      store_rne(copy + i, pi);
    }
  }
}

template <class G>
__global__ void __launch_bounds__(kThreads)
    nonfinite_kernel(CheckBatch batch, const float* grad_scale, float* found_inf) {
  const int slot = batch.blocks.slot[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(batch.blocks.chunk[blockIdx.x]) * kChunk;
  const int64_t end = min(batch.numel[slot], begin + kChunk);
  const G* g = static_cast<const G*>(batch.data[slot]);
  const float scale = *grad_scale;
  uint32_t bad = 0;
  int64_t vec_end = begin;
  if (aligned16(g)) {
    vec_end = begin + (end - begin) / kVec * kVec;
    for (int64_t i = begin + threadIdx.x * kVec; i < vec_end; i += kThreads * kVec) {
      float x[kVec];
      load8(g + i, x);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        bad |= nonfinite(x[k] * scale);
      }
    }
  }
  for (int64_t i = vec_end + threadIdx.x; i < end; i += kThreads) {
    bad |= nonfinite(load_f32(g + i) * scale);
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) {
    *found_inf = 1.0f;  // every writer stores the same value: no atomics needed
  }
}

__global__ void increment_steps_kernel(StepBatch batch, const float* found_inf) {
  if (*found_inf == 0.0f && static_cast<int>(threadIdx.x) < batch.count) {
    *batch.step[threadIdx.x] += 1.0f;
  }
}

// ---- host side --------------------------------------------------------------------------------

// Walk every chunk of every non-empty tensor, filling batch slots through fill(batch, slot, t) and
// calling launch(batch, num_blocks) whenever the slots or the block map are full. A tensor cut by a
// full block map continues in slot 0 of the next batch.
template <class Batch, class Fill, class Launch>
cudaError_t for_each_batch(int64_t num_tensors, const int64_t* numels, Batch& batch, Fill fill, Launch launch) {
  int slot = 0;
  int blocks = 0;
  for (int64_t t = 0; t < num_tensors; ++t) {
    if (numels[t] == 0) {
      continue;
    }
    fill(batch, slot, t);
    const int64_t chunks = (numels[t] + kChunk - 1) / kChunk;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      batch.blocks.slot[blocks] = static_cast<unsigned char>(slot);
      batch.blocks.chunk[blocks] = static_cast<int>(chunk);
      ++blocks;
      const bool last_chunk = chunk == chunks - 1;
      if (blocks == kMaxBlocks || (last_chunk && slot + 1 == kMaxTensors)) {
        const cudaError_t err = launch(batch, blocks);
        if (err != cudaSuccess) {
          return err;
        }
        blocks = 0;
        if (last_chunk) {
          slot = -1;
        } else {
          fill(batch, 0, t);
          slot = 0;
        }
      }
    }
    ++slot;
  }
  return blocks > 0 ? launch(batch, blocks) : cudaSuccess;
}

template <class G>
cudaError_t launch_nonfinite(int64_t n, const void* const* tensors, const int64_t* numels, const float* grad_scale,
                             float* found_inf, cudaStream_t stream) {
  CheckBatch batch;
  auto fill = [&](CheckBatch& b, int slot, int64_t t) {
    b.data[slot] = tensors[t];
    b.numel[slot] = numels[t];
  };
  auto launch = [&](const CheckBatch& b, int blocks) {
    nonfinite_kernel<G><<<blocks, kThreads, 0, stream>>>(b, grad_scale, found_inf);
    return cudaGetLastError();
  };
  return for_each_batch(n, numels, batch, fill, launch);
}

cudaError_t nonfinite_dispatch(int64_t n, const void* const* tensors, const int64_t* numels, int dtype,
                               const float* grad_scale, float* found_inf, cudaStream_t stream) {
  switch (dtype) {
    case FRONTIER_BF16:
      return launch_nonfinite<bf16>(n, tensors, numels, grad_scale, found_inf, stream);
    case FRONTIER_F16:
      return launch_nonfinite<f16>(n, tensors, numels, grad_scale, found_inf, stream);
    default:
      return launch_nonfinite<float>(n, tensors, numels, grad_scale, found_inf, stream);
  }
}

template <class P, class G, class S, bool kCopy>
cudaError_t launch_adamw(const FrontierAdamwLaunch& a, cudaStream_t stream) {
  const AdamwHyper hyper{a.lr, a.beta1, a.beta2, a.eps, a.weight_decay};
  AdamwBatch batch;
  auto fill = [&](AdamwBatch& b, int slot, int64_t t) {
    b.param[slot] = a.params[t];
    b.grad[slot] = a.grads[t];
    b.exp_avg[slot] = a.exp_avgs[t];
    b.exp_avg_sq[slot] = a.exp_avg_sqs[t];
    b.copy[slot] = kCopy ? a.model_copies[t] : nullptr;
    b.step[slot] = a.steps[t];
    b.numel[slot] = a.numels[t];
    b.index[slot] = static_cast<int>(t);
  };
  auto launch = [&](const AdamwBatch& b, int blocks) {
    adamw_kernel<P, G, S, kCopy><<<blocks, kThreads, 0, stream>>>(b, hyper, a.grad_scale, a.found_inf, a.seed);
    return cudaGetLastError();
  };
  return for_each_batch(a.num_tensors, a.numels, batch, fill, launch);
}

template <class P, class G, class S>
cudaError_t by_copy(const FrontierAdamwLaunch& a, cudaStream_t stream) {
  if constexpr (sizeof(P) == sizeof(float)) {  // only fp32 masters have a bf16 model copy
    if (a.model_copies != nullptr) {
      return launch_adamw<P, G, S, true>(a, stream);
    }
  }
  return launch_adamw<P, G, S, false>(a, stream);
}

template <class P, class G>
cudaError_t by_state(const FrontierAdamwLaunch& a, cudaStream_t stream) {
  return a.state_dtype == FRONTIER_BF16 ? by_copy<P, G, bf16>(a, stream) : by_copy<P, G, float>(a, stream);
}

template <class P>
cudaError_t by_grad(const FrontierAdamwLaunch& a, cudaStream_t stream) {
  switch (a.grad_dtype) {
    case FRONTIER_BF16:
      return by_state<P, bf16>(a, stream);
    case FRONTIER_F16:
      return by_state<P, f16>(a, stream);
    default:
      return by_state<P, float>(a, stream);
  }
}

cudaError_t increment_steps(const FrontierAdamwLaunch& a, cudaStream_t stream) {
  StepBatch batch;
  batch.count = 0;
  for (int64_t t = 0; t < a.num_tensors; ++t) {
    batch.step[batch.count++] = a.steps[t];
    if (batch.count == kMaxSteps || t == a.num_tensors - 1) {
      increment_steps_kernel<<<1, kMaxSteps, 0, stream>>>(batch, a.found_inf);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) {
        return err;
      }
      batch.count = 0;
    }
  }
  return cudaSuccess;
}

}  // namespace
}  // namespace cuda
}  // namespace frontier

extern "C" cudaError_t frontier_nonfinite_check_cuda(int64_t num_tensors, const void* const* tensors,
                                                     const int64_t* numels, int dtype, const float* grad_scale,
                                                     float* found_inf, cudaStream_t stream) {
  return frontier::cuda::nonfinite_dispatch(num_tensors, tensors, numels, dtype, grad_scale, found_inf, stream);
}

extern "C" cudaError_t frontier_fused_adamw_cuda(const FrontierAdamwLaunch* a, cudaStream_t stream) {
  using namespace frontier::cuda;
  if (a->num_tensors == 0) {
    return cudaSuccess;
  }
  cudaError_t err = cudaSuccess;
  if (a->check_finite) {
    err = nonfinite_dispatch(a->num_tensors, a->grads, a->numels, a->grad_dtype, a->grad_scale, a->found_inf, stream);
    if (err != cudaSuccess) {
      return err;
    }
  }
  err = a->param_dtype == FRONTIER_BF16 ? by_grad<frontier::bf16>(*a, stream) : by_grad<float>(*a, stream);
  return err != cudaSuccess ? err : increment_steps(*a, stream);
}
