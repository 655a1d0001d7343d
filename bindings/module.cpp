// Python module init for polykernels._C. The ops themselves register through
// TORCH_LIBRARY / TORCH_LIBRARY_IMPL static initialisers when the library is loaded.
#include <Python.h>

static struct PyModuleDef pk_module = {PyModuleDef_HEAD_INIT, "_C",
                                       "polykernels C++ kernels (ops under torch.ops.polykernels_C)",
                                       -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&pk_module); }
