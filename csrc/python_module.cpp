// Makes radd_fast._C importable as a Python module. Importing it runs the static TORCH_LIBRARY
// registrations; the ops are then reached through torch.ops.radd_fast.*. No Python bindings are
// defined here, so the extension has no dependency on pybind11.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "radd_fast compiled kernels", -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
}
