// The AdamW element update, number formats and stochastic rounding, shared by the CPU kernels
// (csrc/*.cpp) and the CUDA kernel (csrc/cuda/*.cu). Plain C++ with no torch headers, so nvcc can
// compile it without c10; every function is inline so each backend vectorizes it in its own loop.
//
// Numerics are chosen so that every backend computes bit-identical results:
//   * fp32 math following torch.optim.AdamW (foreach=False), with the bias corrections folded into
//     two scalars (one division per element), so the fp32 mode matches PyTorch to a few ulps;
//   * no FMA contraction (CPU: -ffp-contract=off, CUDA: --fmad=false) and IEEE sqrt/division;
//   * bias corrections computed in double from the fp32 step count, like PyTorch does in Python;
//   * stochastic-rounding bits from a counter-based hash of (seed, tensor index, step, element
//     index), so they do not depend on how the work is split across threads or blocks.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define FRONTIER_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define FRONTIER_HD inline __attribute__((always_inline))
#else
#define FRONTIER_HD inline
#endif

// dtype codes shared by the torch glue and the C ABI of the CUDA launcher.
enum FrontierDType { FRONTIER_F32 = 0, FRONTIER_BF16 = 1, FRONTIER_F16 = 2 };

#if defined(__has_builtin)
#if __has_builtin(__builtin_bit_cast)
#define FRONTIER_HAS_BIT_CAST 1
#endif
#endif

namespace frontier {

// 16-bit storage types: raw bits, converted explicitly (the host compiler has no native bf16).
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

FRONTIER_HD uint32_t f32_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#elif defined(FRONTIER_HAS_BIT_CAST)
  return __builtin_bit_cast(uint32_t, x);
#else
  uint32_t u;
  __builtin_memcpy(&u, &x, sizeof(u));
  return u;
#endif
}

FRONTIER_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#elif defined(FRONTIER_HAS_BIT_CAST)
  return __builtin_bit_cast(float, u);
#else
  float x;
  __builtin_memcpy(&x, &u, sizeof(x));
  return x;
#endif
}

FRONTIER_HD float bf16_bits_to_f32(uint16_t bits) { return bits_f32(static_cast<uint32_t>(bits) << 16); }

// IEEE half -> float without branches (so loops over it vectorize); the FP16 library's method.
FRONTIER_HD float f16_bits_to_f32(uint16_t bits) {
  const uint32_t w = static_cast<uint32_t>(bits) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = bits_f32((two_w >> 4) + (0xE0u << 23)) * bits_f32(0x7800000u);  // * 2^-112
  const float denormalized = bits_f32((two_w >> 17) | (126u << 23)) - 0.5f;
  // below 2^-14 the half was subnormal (a float compare: vectorizes better than an integer select)
  const float magnitude = normalized < 0x1p-14f ? denormalized : normalized;
  return bits_f32(sign | f32_bits(magnitude));
}

// Loads through the 16-bit member (GCC does not vectorize loads of the wrapper struct itself).
FRONTIER_HD float load_f32(const float* p) { return *p; }
FRONTIER_HD float load_f32(const bf16* p) { return bf16_bits_to_f32(p->bits); }
FRONTIER_HD float load_f32(const f16* p) { return f16_bits_to_f32(p->bits); }

// float -> bf16, round to nearest even. A NaN is truncated instead, which keeps it a NaN: the
// values rounded here come out of fp32 arithmetic, whose NaNs are quiet (bit 22 set). The NaN test
// is a float compare because it vectorizes to one instruction (an integer select costs ~3x more).
FRONTIER_HD uint16_t bf16_rne_bits(float x) {
  const uint32_t u = f32_bits(x);
  const uint32_t round = x == x ? 0x7FFFu + ((u >> 16) & 1u) : 0u;
  return static_cast<uint16_t>((u + round) >> 16);
}

// float -> bf16, stochastic rounding with 16 random bits: rounds away from zero with probability
// equal to the dropped fraction, so E[result] = x (unbiased) and |result - x| < 1 bf16 ulp of x
// (a relative error below 2^-7). Magnitudes only grow toward the next bf16, so signs are kept and
// exp_avg_sq stays non-negative. NaN stays NaN (truncated, as above); values beyond the largest
// bf16 may round to inf.
FRONTIER_HD uint16_t bf16_sr_bits(float x, uint32_t random16) {
  const uint32_t u = f32_bits(x);
  return static_cast<uint16_t>((u + (x == x ? random16 : 0u)) >> 16);
}

// Parameter / model-copy stores: round to nearest even.
FRONTIER_HD void store_rne(float* dst, float x) { *dst = x; }
FRONTIER_HD void store_rne(bf16* dst, float x) { dst->bits = bf16_rne_bits(x); }

// 32-bit integer hash (Wellons' lowbias32): cheap, vectorizes (32-bit multiplies), good avalanche.
FRONTIER_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// One key per (seed, tensor, step): each step draws fresh rounding noise for every tensor.
FRONTIER_HD uint32_t sr_key(uint64_t seed, uint32_t tensor_index, uint32_t step) {
  uint32_t k = mix32(static_cast<uint32_t>(seed) ^ 0x85EBCA6Bu);
  k = mix32(k ^ static_cast<uint32_t>(seed >> 32));
  k = mix32(k ^ (tensor_index * 0xC2B2AE35u));
  return mix32(k + step);
}

// 32 random bits for element `index`: the low half rounds exp_avg, the high half exp_avg_sq. One
// multiply-xorshift (a bijection of index ^ key) is enough here: the key is freshly mixed for every
// (tensor, step), so each element's bits are uniform and independent across steps, which is what
// keeps its rounding unbiased; the multiply decorrelates neighbouring elements within a step.
FRONTIER_HD uint32_t sr_random(uint32_t key, uint32_t index) {
  const uint32_t x = (index ^ key) * 0x9E3779B9u;
  return x ^ (x >> 16);
}

// Optimizer states: fp32 stored as is; bf16 stored with stochastic rounding.
FRONTIER_HD void store_states(float* m, float* v, float m_new, float v_new, uint32_t, uint32_t) {
  *m = m_new;
  *v = v_new;
}
FRONTIER_HD void store_states(bf16* m, bf16* v, float m_new, float v_new, uint32_t key, uint32_t index) {
  const uint32_t r = sr_random(key, index);
  m->bits = bf16_sr_bits(m_new, r & 0xFFFFu);
  v->bits = bf16_sr_bits(v_new, r >> 16);
}

// Hyper-parameters as the caller gave them (double, like Python floats).
struct AdamwHyper {
  double lr, beta1, beta2, eps, weight_decay;
};

// Per-tensor fp32 coefficients for one step, computed in double and rounded once. The bias
// corrections are folded into two scalars, so the update needs one division instead of two:
//   lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) == (lr*sqrt(bc2)/bc1) * m / (sqrt(v) + eps*sqrt(bc2))
struct AdamwCoeffs {
  float decay;     // 1 - lr * weight_decay (decoupled weight decay)
  float w1;        // 1 - beta1: weight of lerp(exp_avg, grad, w1)
  float beta2, w2;  // exp_avg_sq * beta2 + w2 * g * g
  float neg_step;  // -lr * sqrt(1 - beta2^step) / (1 - beta1^step)
  float eps_hat;   // eps * sqrt(1 - beta2^step)
};

FRONTIER_HD AdamwCoeffs adamw_coeffs(const AdamwHyper& h, float step) {
  const double bc1 = 1.0 - pow(h.beta1, static_cast<double>(step));
  const double bc2_sqrt = sqrt(1.0 - pow(h.beta2, static_cast<double>(step)));
  AdamwCoeffs c;
  c.decay = static_cast<float>(1.0 - h.lr * h.weight_decay);
  c.w1 = static_cast<float>(1.0 - h.beta1);
  c.beta2 = static_cast<float>(h.beta2);
  c.w2 = static_cast<float>(1.0 - h.beta2);
  c.neg_step = static_cast<float>(-(h.lr * bc2_sqrt / bc1));
  c.eps_hat = static_cast<float>(h.eps * bc2_sqrt);
  return c;
}

// One AdamW element in fp32 (decoupled weight decay first, as torch.optim.AdamW does):
//   p *= 1 - lr*wd;  m = lerp(m, g, 1-beta1);  v = v*beta2 + (1-beta2)*g*g;
//   p += neg_step * m / (sqrt(v) + eps_hat)
// lerp is computed as m + w*(g - m), PyTorch's formula for weights below 0.5 (beta1 > 0.5, every
// practical setting); one formula keeps the loop free of selects the vectorizer rejects. Division
// and sqrt share one slow unit on x86, so the single division matters even when memory-bound.
FRONTIER_HD void adamw_element(const AdamwCoeffs& c, float g, float& p, float& m, float& v) {
  p = p * c.decay;
  m = m + c.w1 * (g - m);
  v = v * c.beta2;
  v = v + (c.w2 * g) * g;
  p = p + (c.neg_step * m) / (sqrtf(v) + c.eps_hat);
}

// 1 when x is inf or NaN (exponent all ones), as an integer so OR-reductions vectorize.
FRONTIER_HD uint32_t nonfinite(float x) { return (f32_bits(x) & 0x7F800000u) == 0x7F800000u; }

}  // namespace frontier
