// C++ tests of common/checks.h: msg() gives the text c10::str (an ostringstream) gives for every
// argument type the library's messages use, and the check helpers raise the right error types.
#include <ATen/ATen.h>
#include <c10/util/StringUtil.h>

#include <cmath>
#include <limits>

#include "common/checks.h"
#include "tests/test_util.h"

using radd_fast::msg;
using radd_fast::test::expect_throw;

namespace {

template <typename... Args>
void same_text(const char* what, const Args&... args) {
  const std::string ours = msg(args...);
  const std::string theirs = c10::str(args...);
  EXPECT(ours == theirs, "%s: msg gave '%s', c10::str '%s'", what, ours.c_str(), theirs.c_str());
}

}  // namespace

int main() {
  same_text("strings", "radd_fast.", "rotary", std::string(": 'qkv'"), std::string_view(" x"), 'c');
  same_text("integers", int64_t(-3), int64_t(1) << 40, 0, 7u, size_t(123456789012), int32_t(-2147483647 - 1),
            std::numeric_limits<int64_t>::min(), std::numeric_limits<uint64_t>::max());
  same_text("bool", true, false);
  same_text("doubles", 0.0, -0.0, 1.5, -2.25, 0.1, 1.0 / 3.0, 1e-7, 123456789.0, 1e300, 2.0f);
  same_text("non-finite", std::nan(""), std::numeric_limits<double>::infinity(),
            -std::numeric_limits<double>::infinity());
  const std::vector<int64_t> shape{2, 5, 3}, empty{};
  same_text("shapes", c10::IntArrayRef(shape), " and ", c10::IntArrayRef(empty), c10::IntArrayRef({7}));
  same_text("devices", c10::Device(c10::DeviceType::CPU), c10::Device(c10::DeviceType::CUDA, 1));
  same_text("mixed", "radd_fast.linear_dce_loss: 'target' values must be in [0, num_classes) = [0, ", int64_t(10),
            "), got ", int64_t(10), " at row ", int64_t(2));

  const at::Tensor x = at::randn({2, 3});
  expect_throw<c10::ValueError>([&] { radd_fast::check_dim(x, 3, "op", "x", "(a, b, c)"); },
                                "radd_fast.op: 'x' must have shape (a, b, c), got [2, 3]", "check_dim");
  expect_throw<c10::TypeError>([&] { radd_fast::check_dtype(x, {at::kLong, at::kInt}, "op", "x"); },
                               "'x' must have dtype int64, int32, got float32", "check_dtype");
  expect_throw<c10::ValueError>([&] { radd_fast::check_contiguous(x.t(), "op", "x"); },
                                "got strides [1, 3] for shape [3, 2]", "check_contiguous");
  std::printf("%s\n", radd_fast::test::failures() ? "FAILED" : "test_checks: ok");
  return radd_fast::test::failures();
}
