"""Peak-memory measurement shared by the tests of the online algorithms and FPTT."""

import tracemalloc


def peak_bytes(fn) -> int:
    """The peak of Python/NumPy allocations (tracemalloc) while fn() runs; allocations made before are not counted.
    fn runs once untraced first, so that what the interpreter and NumPy keep for reuse (small-buffer and type caches,
    bounded) is in place before counting: what is left is what fn itself holds."""
    fn()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
