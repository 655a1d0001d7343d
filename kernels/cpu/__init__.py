"""C++ CPU kernels (sources here, compiled into polykernels._C) and their registration."""
