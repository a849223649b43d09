// Counter-based random numbers shared by the CPU and CUDA kernels: Philox4x32-10 (Salmon et al.,
// SC'11), so a draw depends only on (seed, offset, subsequence), never on thread layout or launch
// order. The same bits therefore come out of the CPU and the CUDA kernels, and out of
// radd_fast.reference.philox4x32 (the pure-PyTorch copy the tests compare against).
//
// Stream layout used by every radd_fast op: key = seed (64 bits), counter = (subsequence lo, hi,
// offset lo, hi). A caller gives each use its own offset (the sampler: 0 for the reveal schedule,
// r + 1 for round r); within a use, the subsequence numbers the blocks of 4 words.
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace radd_fast::philox {

struct Words {
  uint32_t w[4];
};

RADD_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = uint64_t(a) * uint64_t(b);
  hi = uint32_t(p >> 32);
  lo = uint32_t(p);
}

// The Random123 reference algorithm: 10 rounds, key bumped before each round after the first.
RADD_HD Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k0 += W0;
      k1 += W1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(M0, c0, hi0, lo0);
    mulhilo(M1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return Words{{c0, c1, c2, c3}};
}

// The 4 words of block `subsequence` of stream `offset` under `seed`.
RADD_HD Words block(uint64_t seed, uint64_t offset, uint64_t subsequence) {
  return philox4x32_10(uint32_t(subsequence), uint32_t(subsequence >> 32), uint32_t(offset), uint32_t(offset >> 32),
                       uint32_t(seed), uint32_t(seed >> 32));
}

// Offsets are >= 0 (int64 in the op schemas), so bit 63 of the counter is free: it marks the
// second, independent stream that supplies extra bits (exponential_noise below).
constexpr uint64_t kExtraBitsStream = uint64_t(1) << 63;

// Uniform double in [0, 1) with 53 random bits from two words.
RADD_HD double uniform53(uint32_t a, uint32_t b) {
  return double(((uint64_t(a) << 32) | b) >> 11) * 0x1p-53;
}

}  // namespace radd_fast::philox
