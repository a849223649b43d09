// CPU kernels of radd_fast::sample_rows and radd_fast::filter_logits (definitions in
// sample_rows.h). Rows in parallel; within a row, the thresholds by radix select (integer
// histograms), then the exponential race with the noise drawn into a buffer and its logarithms
// taken in vector registers.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "sample_rows/sample_rows.h"

namespace radd_fast::sample_rows {
namespace {

template <typename T>
struct RowScratch {
  std::vector<uint64_t> mass;  // fixed-point masses (top-p only)
  std::vector<T> score;        // race scores
};

template <typename T>
T row_max(const T* l, int64_t V) {
  return at::vec::reduce_all<T>([](auto& a, auto& b) { return at::vec::maximum(a, b); }, l, V);
}

// The smallest key kept by top-k and top-p (0 keeps everything).
template <typename T>
typename KeyType<T>::type row_threshold(const T* l, int64_t V, T lmax, const Params& p, int shift,
                                        RowScratch<T>& s) {
  using key_t = typename KeyType<T>::type;
  constexpr int bits = int(sizeof(key_t) * 8);
  key_t tau = 0;
  uint64_t hist[kBins];
  auto radix = [&](const uint64_t* weight, double need) {
    RadixState<key_t> st;
    for (int sh = bits - kRadixBits; sh >= 0; sh -= kRadixBits) {
      std::fill(hist, hist + kBins, uint64_t(0));
      for (int64_t v = 0; v < V; ++v) {
        const key_t k = order_key(l[v]);
        if (k >= tau && (k & st.mask) == st.prefix) hist[(k >> sh) & (kBins - 1)] += weight ? weight[v] : 1u;
      }
      uint64_t above;
      const int b = select_bin_host(hist, st.above, need, above);
      st.above = above;
      st.prefix |= key_t(b) << sh;
      st.mask |= key_t(kBins - 1) << sh;
    }
    return st.prefix;
  };
  if (p.top_k > 0 && p.top_k < V) tau = radix(nullptr, double(p.top_k));
  if (p.top_p < 1.0) {
    s.mass.resize(V);
    const double scale = std::ldexp(1.0, shift);
    uint64_t Z = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double e = std::exp((double(l[v]) - double(lmax)) / p.temperature);
      s.mass[v] = order_key(l[v]) >= tau ? uint64_t(std::nearbyint(e * scale)) : 0u;
      Z += s.mass[v];
    }
    tau = radix(s.mass.data(), p.top_p * double(Z));
  }
  return tau;
}

template <typename T>
void sample_row(const T* l, int64_t V, int64_t row, const Params& p, int shift, RowScratch<T>& s, int64_t& token,
                T& log_prob) {
  using key_t = typename KeyType<T>::type;
  using Vec = at::vec::Vectorized<T>;
  const T lmax = row_max(l, V);
  const key_t tau = row_threshold(l, V, lmax, p, shift, s);
  const T temp = T(p.temperature);
  const T ninf = -std::numeric_limits<T>::infinity();
  s.score.resize(V);
  T* sc = s.score.data();
  if (p.greedy) {
    token = std::find(l, l + V, lmax) - l;  // first maximum
  } else {
    // u into the score buffer, then score = x - log(-log1p(-u)) in vector registers.
    const int64_t G = (V + 3) / 4;
    for (int64_t g = 0; g < G; ++g) {
      uint32_t hi[4], lo[4];
      noise_words<T>(p.seed, p.offset, uint64_t(row) * uint64_t(G) + uint64_t(g), hi, lo);
      for (int j = 0; j < 4 && 4 * g + j < V; ++j) sc[4 * g + j] = uniform_open(hi[j], lo[j], static_cast<T*>(nullptr));
    }
    const Vec vt(temp), zero(T(0));
    int64_t v = 0;
    for (; v + Vec::size() <= V; v += Vec::size()) {
      const Vec u = Vec::loadu(sc + v);
      const Vec e = zero - (zero - u).log1p();
      (Vec::loadu(l + v) / vt - e.log()).store(sc + v);
    }
    for (; v < V; ++v) sc[v] = l[v] / temp + noise_from_u(sc[v]);
    if (tau != 0)
      for (int64_t w = 0; w < V; ++w)
        if (order_key(l[w]) < tau) sc[w] = ninf;
    const T best = row_max(sc, V);
    token = std::find(sc, sc + V, best) - sc;
  }
  // log-probability of the token under the filtered, tempered distribution
  T sum = 0;
  if (tau == 0) {
    sum = at::vec::map_reduce_all<T>([&](Vec x) { return ((x - Vec(lmax)) / Vec(temp)).exp(); },
                                     [](Vec a, Vec b) { return a + b; }, l, V);
  } else {
    for (int64_t w = 0; w < V; ++w)
      if (order_key(l[w]) >= tau) sum += std::exp((l[w] - lmax) / temp);
  }
  if (token >= V) {  // no comparable logit (a NaN row): as the reference, token 0 with log_prob NaN
    token = 0;
    log_prob = std::numeric_limits<T>::quiet_NaN();
    return;
  }
  log_prob = (l[token] - lmax) / temp - std::log(sum);
}

template <typename T>
void filter_row(const T* l, T* out, int64_t V, const Params& p, int shift, RowScratch<T>& s) {
  const T lmax = row_max(l, V);
  const auto tau = row_threshold(l, V, lmax, p, shift, s);
  const T temp = T(p.temperature), ninf = -std::numeric_limits<T>::infinity();
  for (int64_t v = 0; v < V; ++v) out[v] = order_key(l[v]) >= tau ? l[v] / temp : ninf;
}

// Logits of a few rows: one pass over the weight, each weight row dotted with every hidden row
// while it sits in L1. For the sampler's typical rounds (a handful of rows) this reads the weight
// at memory speed; MKL's gemm with M <= 16 measured 2-4x slower here (16-23 ms against about 6 ms
// for V = 50,257, H = 128 on 2 cores). Larger chunks go to at::addmm.
constexpr int64_t kFewRows = 16;

template <typename T>
void few_rows_logits(const T* h, const T* w, const T* bias, int64_t rows, int64_t V, int64_t H, T* out) {
  using Vec = at::vec::Vectorized<T>;
  at::parallel_for(0, V, 256, [&](int64_t v0, int64_t v1) {
    for (int64_t v = v0; v < v1; ++v) {
      const T* wr = w + v * H;
      for (int64_t r = 0; r < rows; ++r) {
        const T* hr = h + r * H;
        Vec acc(T(0));
        int64_t k = 0;
        for (; k + Vec::size() <= H; k += Vec::size()) acc = at::vec::fmadd(Vec::loadu(wr + k), Vec::loadu(hr + k), acc);
        T sum = at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, acc);
        for (; k < H; ++k) sum += wr[k] * hr[k];
        out[r * V + v] = sum + (bias ? bias[v] : T(0));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> sample_rows_cpu(const at::Tensor& hidden, const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& bias, int64_t num_classes,
                                                   double temperature, int64_t top_k, double top_p, bool greedy,
                                                   int64_t seed, int64_t offset) {
  const NoAutocast no_autocast(kAutocastKeys);  // the head matmul stays in the inputs' dtype
  const char* op = "sample_rows";
  check_sample_rows_args(hidden, weight, bias, num_classes, temperature, top_k, top_p, offset, op);
  check_device_type(hidden, c10::DeviceType::CPU, op, "hidden");
  const int64_t N = hidden.size(0), V = num_classes;
  at::Tensor tokens = at::empty({N}, hidden.options().dtype(at::kLong));
  at::Tensor log_prob = at::empty({N}, hidden.options());
  if (N == 0) return {tokens, log_prob};
  const Params p{temperature, top_k, top_p, greedy, uint64_t(seed), uint64_t(offset)};
  const int shift = mass_shift(V);
  const at::Tensor w = weight.narrow(0, 0, V).t();
  const bool has_bias = bias.has_value() && bias->defined();
  // 2^22 logits (16 MB in float32) per chunk: one matmul, then the rows in parallel.
  const int64_t chunk = chunk_rows(N, V, int64_t(1) << 22);
  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "sample_rows_cpu", [&] {
    int64_t* tok = tokens.data_ptr<int64_t>();
    scalar_t* lp = log_prob.data_ptr<scalar_t>();
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t rows = std::min(chunk, N - r0);
      const at::Tensor h = hidden.narrow(0, r0, rows);
      at::Tensor logits;
      if (rows <= kFewRows) {
        logits = at::empty({rows, V}, hidden.options());
        few_rows_logits<scalar_t>(h.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                  has_bias ? bias->const_data_ptr<scalar_t>() : nullptr, rows, V, hidden.size(1),
                                  logits.data_ptr<scalar_t>());
      } else {
        logits = has_bias ? at::addmm(bias->narrow(0, 0, V), h, w) : at::mm(h, w);
      }
      const scalar_t* lg = logits.const_data_ptr<scalar_t>();
      at::parallel_for(0, rows, 1, [&](int64_t a, int64_t b) {
        RowScratch<scalar_t> s;
        for (int64_t r = a; r < b; ++r) sample_row<scalar_t>(lg + r * V, V, r0 + r, p, shift, s, tok[r0 + r], lp[r0 + r]);
      });
    }
  });
  return {tokens, log_prob};
}

at::Tensor filter_logits_cpu(const at::Tensor& logits, double temperature, int64_t top_k, double top_p) {
  const char* op = "filter_logits";
  check_filter_logits_args(logits, temperature, top_k, top_p, op);
  check_device_type(logits, c10::DeviceType::CPU, op, "logits");
  at::Tensor out = at::empty_like(logits);
  const int64_t N = logits.size(0), V = logits.size(1);
  if (N == 0 || V == 0) return out;
  const Params p{temperature, top_k, top_p, false, 0, 0};
  const int shift = mass_shift(V);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "filter_logits_cpu", [&] {
    const scalar_t* l = logits.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t a, int64_t b) {
      RowScratch<scalar_t> s;
      for (int64_t r = a; r < b; ++r) filter_row<scalar_t>(l + r * V, o + r * V, V, p, shift, s);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(radd_fast, CPU, m) {
  m.impl("sample_rows", &sample_rows_cpu);
  m.impl("filter_logits", &filter_logits_cpu);
}

}  // namespace radd_fast::sample_rows
