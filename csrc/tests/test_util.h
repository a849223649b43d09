// A few lines of test harness for the C++ tests (no framework needed): EXPECT records a failure and
// goes on; main returns the failure count.
#pragma once

#include <cstdio>
#include <functional>
#include <string>

namespace radd_fast::test {

inline int& failures() {
  static int n = 0;
  return n;
}

#define EXPECT(cond, ...)                                                        \
  do {                                                                          \
    if (!(cond)) {                                                              \
      std::fprintf(stderr, "FAIL %s:%d: %s ", __FILE__, __LINE__, #cond);       \
      std::fprintf(stderr, __VA_ARGS__);                                        \
      std::fprintf(stderr, "\n");                                               \
      ++radd_fast::test::failures();                                            \
    }                                                                           \
  } while (0)

// Runs f and checks that it throws an exception of type E whose message contains `needle`.
template <typename E>
void expect_throw(const std::function<void()>& f, const std::string& needle, const char* what) {
  try {
    f();
  } catch (const E& e) {
    const std::string msg = e.what();
    EXPECT(msg.find(needle) != std::string::npos, "%s: message lacks '%s': %s", what, needle.c_str(), msg.c_str());
    return;
  } catch (const std::exception& e) {
    EXPECT(false, "%s: wrong exception type: %s", what, e.what());
    return;
  }
  EXPECT(false, "%s: no exception", what);
}

}  // namespace radd_fast::test
