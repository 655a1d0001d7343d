"""CUDA C++ kernels (torch-free device code in *.cu / *.h, compiled into polykernels._C only
in CUDA builds) and the Python registration of their impls (register.py)."""
