r"""Custom Metal kernels (mx.fast.metal_kernel) for the LRU's diagonal scan and its adjoint — Apple silicon only.

The LRU recurrence is diagonal, so each (b, k) channel is an independent scalar recurrence: one GPU thread per channel
runs the whole time loop, with no per-step kernel launches (the generic path in cells.py issues one compiled MLX step
per t). Equation numbers "(n)" are refimpl/cells/lru.py's. Complex64 numbers travel as separate float32 re/im arrays.

    LRU_SCAN     (3)  h_t = λ ⊙ h_{t-1} + u_t,  t = 0 … T-1                                  thread (b, k)
    LRU_ADJOINT  (8)  ū_t = h̄_t = dh_t + conj(λ) ⊙ h̄_{t+1},  t = T-1 … 0;  h̄_{-1} = conj(λ) ⊙ h̄_0    thread (b, k)

Everything around the scans (λ, γ, the input GEMMs, the gradient GEMMs) is the cells.py code, unchanged.

NOTE: these kernels run only where mx.metal.is_available(); backends/mlx/__init__.py then registers lru_forward /
lru_backward below in place of the cells.py ones. Elsewhere (Linux, the project's CI) they are never called: the
tests build the kernel objects from this source and run the parity tests of the Metal path only on Apple hardware.
"""

from __future__ import annotations

import functools

import mlx.core as mx

from refimpl.cells.lru import LRUCache

from .cells import lambda_gamma, lru_input, lru_param_grads
from .common import complex_from, kernel, shifted

#: (3), one thread per channel idx = b·N + k of the (T, B, N) arrays, t outermost in memory.
LRU_SCAN = """
    uint idx = thread_position_in_grid.x;
    uint T = u_re_shape[0];
    uint N = u_re_shape[2];
    uint BN = u_re_shape[1] * N;
    if (idx >= BN) {
        return;
    }
    uint k = idx % N;
    float lr = lam_re[k];
    float li = lam_im[k];
    float hr = h0_re[idx];
    float hi = h0_im[idx];
    for (uint t = 0; t < T; ++t) {
        uint j = t * BN + idx;
        float nr = lr * hr - li * hi + u_re[j];       // (3) Re(λ h_{t-1} + u_t)
        float ni = lr * hi + li * hr + u_im[j];       // (3) Im(λ h_{t-1} + u_t)
        hr = nr;
        hi = ni;
        h_re[j] = hr;
        h_im[j] = hi;
    }
"""

#: (8), one thread per channel; writes ū_t (T, B, N) and h̄_{-1} (B, N).
LRU_ADJOINT = """
    uint idx = thread_position_in_grid.x;
    uint T = dh_re_shape[0];
    uint N = dh_re_shape[2];
    uint BN = dh_re_shape[1] * N;
    if (idx >= BN) {
        return;
    }
    uint k = idx % N;
    float lr = lam_re[k];
    float li = lam_im[k];
    float cr = 0.0f;
    float ci = 0.0f;
    for (uint s = 0; s < T; ++s) {
        uint j = (T - 1 - s) * BN + idx;
        float gr = dh_re[j] + cr;                     // (8) h̄_t = dh_t + carried
        float gi = dh_im[j] + ci;
        du_re[j] = gr;                                // (5) ū_t = h̄_t
        du_im[j] = gi;
        cr = lr * gr + li * gi;                       // (5) conj(λ) h̄_t
        ci = lr * gi - li * gr;
    }
    dh0_re[idx] = cr;
    dh0_im[idx] = ci;
"""


#: The arrays each kernel reads and writes, by the names its source uses (inputs are float32, row-contiguous).
SCAN_INPUTS, SCAN_OUTPUTS = ("lam_re", "lam_im", "h0_re", "h0_im", "u_re", "u_im"), ("h_re", "h_im")
ADJOINT_INPUTS, ADJOINT_OUTPUTS = ("lam_re", "lam_im", "dh_re", "dh_im"), ("du_re", "du_im", "dh0_re", "dh0_im")


def enabled() -> bool:
    """Whether the Metal kernels can run here (Apple silicon with MLX's Metal back-end)."""
    return mx.metal.is_available()


@functools.lru_cache(maxsize=None)
def scan_kernel():
    """The mx.fast.metal_kernel object of LRU_SCAN (building it needs no GPU; calling it does)."""
    return mx.fast.metal_kernel(name="lru_scan", input_names=list(SCAN_INPUTS), output_names=list(SCAN_OUTPUTS),
                                source=LRU_SCAN)


@functools.lru_cache(maxsize=None)
def adjoint_kernel():
    """The mx.fast.metal_kernel object of LRU_ADJOINT."""
    return mx.fast.metal_kernel(name="lru_adjoint", input_names=list(ADJOINT_INPUTS),
                                output_names=list(ADJOINT_OUTPUTS), source=LRU_ADJOINT)


def _launch(kern, inputs, shapes, channels):
    threads = min(256, channels)
    return kern(inputs=inputs, grid=(channels, 1, 1), threadgroup=(threads, 1, 1),
                output_shapes=shapes, output_dtypes=[mx.float32] * len(shapes))


def lru_scan_metal(lam, h0, u):
    """h c(T, B, N) of (3) by LRU_SCAN."""
    T, B, N = u.shape
    h_re, h_im = _launch(scan_kernel(), [mx.real(lam), mx.imag(lam), mx.real(h0), mx.imag(h0), mx.real(u),
                                         mx.imag(u)], [(T, B, N), (T, B, N)], B * N)
    return complex_from(h_re, h_im)


def lru_adjoint_metal(lam, dh):
    """(ū c(T, B, N), h̄_{-1} c(B, N)) of (8) by LRU_ADJOINT."""
    T, B, N = dh.shape
    du_re, du_im, dh0_re, dh0_im = _launch(adjoint_kernel(), [mx.real(lam), mx.imag(lam), mx.real(dh), mx.imag(dh)],
                                           [(T, B, N), (T, B, N), (B, N), (B, N)], B * N)
    return complex_from(du_re, du_im), complex_from(dh0_re, dh0_im)


@kernel
def lru_forward(params: dict, x: mx.array, h0: mx.array):
    """As refimpl.cells.lru.forward, with the scan (3) as one Metal kernel."""
    lam, gamma = lambda_gamma(params)                                        # (1)
    h = lru_scan_metal(lam, h0, lru_input(params, x, gamma))                 # (2), (3)
    return h, LRUCache(x=x, h_prev=shifted(h0, h), h=h)


@kernel
def lru_backward(params: dict, dh: mx.array, cache: LRUCache) -> dict:
    """As refimpl.cells.lru.backward, with the adjoint scan (8) as one Metal kernel."""
    lam, gamma = lambda_gamma(params)
    du, dh0 = lru_adjoint_metal(lam, dh)                                     # (5), (8)
    grads = lru_param_grads(params, lam, gamma, cache.x, cache.h_prev, du)   # (5)–(7)
    grads["h0"] = dh0
    return grads


KERNELS = {"lru.forward": lru_forward, "lru.backward": lru_backward}
