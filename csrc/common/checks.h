// Argument checks shared by every op's CPU and CUDA entry points. Each message names the op and the
// argument, so a bad call from Python reads e.g.
//   ValueError: radd_fast.rotary: 'qkv' must have shape (B, L, 3, heads, head_dim), got [2, 5, 3]
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>

namespace radd_fast {

// Error messages are built here, by appending to one std::string, and passed to TORCH_CHECK* as
// that single string (which c10::str returns as is). Nothing in this library formats a number
// through an iostream: on the H200 machine (torch 2.11, host compiler g++ 13) the extension's
// errors whose messages formatted integers or shapes through c10::str's ostringstream killed the
// process, while string-only messages from the same files reached Python (bench/RESULTS.md).
// Numbers are written by std::to_string / snprintf("%g"), which give the same text as the
// ostream defaults.
namespace detail {
inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, std::string_view v) { s.append(v.data(), v.size()); }
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, char v) { s += v; }
inline void append(std::string& s, bool v) { s += v ? '1' : '0'; }  // as an ostream prints it
template <typename T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
inline void append(std::string& s, T v) {
  s += std::to_string(v);
}
inline void append(std::string& s, double v) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%g", v);
  s += buf;
}
inline void append(std::string& s, float v) { append(s, double(v)); }
inline void append(std::string& s, c10::IntArrayRef v) {
  s += '[';
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(v[i]);
  }
  s += ']';
}
inline void append(std::string& s, const c10::Device& d) { s += d.str(); }
}  // namespace detail

// msg("a", 1, "b", sizes) -> "a1b[2, 3]": the text c10::str would give, without an ostream.
template <typename... Args>
std::string msg(const Args&... args) {
  std::string s;
  (detail::append(s, args), ...);
  return s;
}

// torch's Python spelling of a dtype (float32, not Float), so messages read as they do in Python.
inline const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return c10::toString(t);
  }
}

inline std::string dtype_list(std::initializer_list<at::ScalarType> ok) {
  std::string s;
  for (auto t : ok) {
    if (!s.empty()) s += ", ";
    s += dtype_name(t);
  }
  return s;
}

inline void check_defined(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), msg("radd_fast.", op, ": '", name, "' is undefined"));
}

inline void check_dtype(const at::Tensor& t, std::initializer_list<at::ScalarType> ok, const char* op,
                        const char* name) {
  for (auto d : ok)
    if (t.scalar_type() == d) return;
  TORCH_CHECK_TYPE(false, msg("radd_fast.", op, ": '", name, "' must have dtype ", dtype_list(ok), ", got ",
                              dtype_name(t.scalar_type())));
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* op, const char* name_a,
                             const char* name_b) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(),
                   msg("radd_fast.", op, ": '", name_b, "' must have the dtype of '", name_a, "' (",
                       dtype_name(a.scalar_type()), "), got ", dtype_name(b.scalar_type())));
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op, const char* name_a,
                              const char* name_b) {
  TORCH_CHECK_VALUE(a.device() == b.device(), msg("radd_fast.", op, ": '", name_b, "' must be on the device of '",
                                                  name_a, "' (", a.device(), "), got ", b.device()));
}

inline void check_device_type(const at::Tensor& t, c10::DeviceType type, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device().type() == type,
                    msg("radd_fast.", op, ": '", name, "' must be a ", c10::DeviceTypeName(type, /*lower_case=*/true),
                        " tensor for this kernel, got ", t.device()));
}

inline void check_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.is_contiguous(),
                    msg("radd_fast.", op, ": '", name, "' must be contiguous (call .contiguous() first), got strides ",
                        t.strides(), " for shape ", t.sizes()));
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* name, const char* shape) {
  TORCH_CHECK_VALUE(t.dim() == dim,
                    msg("radd_fast.", op, ": '", name, "' must have shape ", shape, ", got ", t.sizes()));
}

}  // namespace radd_fast

namespace radd_fast {
// Kernels that call ATen matmuls internally (sample_rows' head, the CPU loss's chunk GEMMs) compute
// in the dtypes they were given. Inside torch.autocast those inner calls would otherwise be re-cast
// (an fp32 at::mm returns bf16) and the kernel would read the wrong dtype. Hold one of these for
// the kernel's whole body.
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;
inline constexpr c10::DispatchKeySet kAutocastKeys = c10::autocast_dispatch_keyset;
}  // namespace radd_fast
