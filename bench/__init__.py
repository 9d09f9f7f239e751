"""The microbenchmark suite: times registry kernels across backends and sizes.

Nothing here yet: the first runner arrives with the Numba backend, and it will iterate over refimpl.registry.KERNELS
(each kernel's input spec gives the benchmark inputs), so no kernel needs benchmark code of its own.
"""
