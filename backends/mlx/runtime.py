r"""The MLX backend's runtime: the float64 policy, evaluation at the boundary, the GEMM helpers, and the Metal kernels.

MLX arrays are lazy: an expression builds a graph and nothing runs until `mx.eval`. Every kernel of this package is
wrapped by `@kernel`, which evaluates the whole output tree before returning it, so a caller (and a timer) always gets
computed arrays, exactly like the NumPy reference.

Precision rules (the reasons, measured, are in docs/backends.md):
    - float64 exists on the CPU stream only (MLX's GPU back-ends have no double type): `@kernel` refuses float64
      inputs when the default device is a GPU, with the reason, instead of downcasting them. The FPTT kernels, whose
      carriers are float64 in every dtype (the reference's default), run on the CPU stream (mx.cpu) as a whole.
    - in float64, mx.exp (hence mx.sigmoid), mx.sin and mx.cos are only float32-accurate; mx.tanh, mx.log and
      mx.expm1 are accurate. So σ(a) is written ½(1 + tanh(a/2)) — the reference's own formula, the backend's one σ —
      and the float64 paths use no exp, sin or cos. (The LRU, which needs exp of a complex number, runs in complex64
      only: MLX has no complex128.)
    - a real input times a complex matrix is done as two real GEMMs (half the flops of the promoted complex GEMM).
    - MLX has no complex128, but the lru's FPTT carriers are complex128 (the reference's default carrier dtype) in
      every dtype: such an array crosses the boundary as a `Complex128`, a pair of float64 mx.arrays (re, im), exact
      both ways. Only the carry of a `float64_carriers` kernel may hold one; anywhere else `@kernel` refuses it.

Metal (Apple silicon only). The LRU recurrence is diagonal, so each (b, k) channel is an independent scalar recurrence:
LRU_SCAN and LRU_ADJOINT run one GPU thread per channel through the whole time loop, with no per-step kernel launches
(the generic path in cells.py issues one compiled MLX step per t). Equation numbers "(n)" are refimpl/cells/lru.py's;
complex64 numbers travel as separate float32 re/im arrays.

    LRU_SCAN     (3)  h_t = λ ⊙ h_{t-1} + u_t,  t = 0 … T-1                                  thread (b, k)
    LRU_ADJOINT  (8)  ū_t = h̄_t = dh_t + conj(λ) ⊙ h̄_{t+1},  t = T-1 … 0;  h̄_{-1} = conj(λ) ⊙ h̄_0    thread (b, k)

NOTE: these kernels run only where mx.metal.is_available(); backends/mlx/__init__.py then registers
cells.METAL_KERNELS (the lru cells with these scans) in place of the generic ones. Elsewhere (Linux, the project's CI)
they are never called: the tests build the kernel objects from this source and run the parity tests of the Metal path
only on Apple hardware.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import mlx.core as mx
import numpy as np

from refimpl.errors import DTypeError, ShapeError, UnsupportedError
from refimpl.registry import map_arrays


def float64_reason() -> str:
    """Why float64 inputs are refused here ("" when they are not): MLX runs float64 on its CPU stream only."""
    if mx.default_device() == mx.cpu:
        return ""
    return (f"MLX runs float64 only on its CPU stream (its GPU back-ends have no double type) and the default device "
            f"is {mx.default_device()}; call mx.set_default_device(mx.cpu) before the kernel, or use float32")


class Complex128:
    """A complex128 array as MLX can hold it: two float64 mx.arrays `re`, `im` of the same shape (MLX has no
    complex128 type). It has `shape` and `dtype` (numpy's complex128), so the registry's map_arrays treats it as one
    array leaf; the backend's to_backend / to_numpy convert it exactly. The lru's FPTT carriers travel as these."""

    __slots__ = ("re", "im")
    dtype = np.dtype(np.complex128)

    def __init__(self, re: mx.array, im: mx.array):
        if re.shape != im.shape or re.dtype != mx.float64 or im.dtype != mx.float64:
            raise DTypeError(f"Complex128 takes two float64 arrays of one shape, got {re.dtype} {re.shape} and "
                             f"{im.dtype} {im.shape}")
        self.re, self.im = re, im

    @property
    def shape(self) -> tuple:
        return tuple(self.re.shape)

    @classmethod
    def from_numpy(cls, a: np.ndarray) -> "Complex128":
        return cls(mx.array(np.ascontiguousarray(a.real), dtype=mx.float64),
                   mx.array(np.ascontiguousarray(a.imag), dtype=mx.float64))

    def numpy(self) -> np.ndarray:
        return np.array(self.re) + 1j * np.array(self.im)

    def __repr__(self) -> str:
        return f"Complex128(shape={self.shape})"


def array_leaves(tree) -> list:
    """Every mx.array of a tree; a Complex128 gives its two float64 halves."""
    out = []
    map_arrays(out.append, tree)
    return [half for a in out for half in ((a.re, a.im) if isinstance(a, Complex128) else (a,))]


def _refuse_complex128(f, inputs) -> None:
    found = []
    map_arrays(lambda a: found.append(a) if isinstance(a, Complex128) else None, inputs)
    if found:
        raise DTypeError(f"MLX kernel {f.__name__} got a complex128 array {found[0].shape}: MLX has no complex128 "
                         f"(only complex64); convert explicitly with a.astype(np.complex64) if that precision is "
                         f"enough, or use the numpy/numba backends for complex128")


def kernel(fn=None, *, float64_carriers: bool = False):
    """Decorator of every kernel: refuse float64 inputs on a GPU default device (with the reason), refuse complex128
    (Complex128) inputs, and return the output tree evaluated (mx.eval), so nothing lazy leaves the kernel.

    float64_carriers: the kernel runs float64 arithmetic whatever its inputs' dtype (FPTT's carriers, as the
    reference's default carrier="float64"), so it runs on the CPU stream in every dtype; its `carry` argument holds
    float64 carriers (Complex128 ones for the lru) in every dtype, and is exempt from both refusals.
    """
    def wrap(f):
        signature = inspect.signature(f)

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            inputs = signature.bind_partial(*args, **kwargs).arguments
            if float64_carriers:
                inputs = {k: v for k, v in inputs.items() if k != "carry"}
            _refuse_complex128(f, inputs)
            if any(getattr(a, "dtype", None) == mx.float64 for a in array_leaves(inputs)):
                why = float64_reason()
                if why:
                    raise UnsupportedError(f"MLX kernel {f.__name__} cannot run float64 inputs here: {why}")
            with mx.stream(mx.cpu) if float64_carriers else contextlib.nullcontext():
                out = f(*args, **kwargs)
                mx.eval(array_leaves(out))
            return out
        return wrapper
    return wrap(fn) if fn is not None else wrap


def checked_carry(carry, shapes: dict, what: str):
    """A carried kernel's `carry` before its chunk, checked against the layout it must have: None (the start of a
    stream) stays None; otherwise its names must be those of `shapes` ({name: shape}) and each array that shape
    (ShapeError otherwise, as the reference's checks)."""
    if carry is None:
        return None
    if set(carry) != set(shapes):
        raise ShapeError(f"the carry of {what} names {sorted(carry)}; expected {sorted(shapes)}: pass the 'carry' "
                         f"the previous chunk's call returned")
    for name, shape in shapes.items():
        if tuple(carry[name].shape) != tuple(shape):
            raise ShapeError(f"the carried {name!r} of {what} has shape {tuple(carry[name].shape)}; expected "
                             f"{tuple(shape)}: pass the 'carry' the previous chunk's call returned")
    return carry


# ---------------------------------------------------------------------------------------------- math and GEMMs

def sigmoid(a: mx.array) -> mx.array:
    """σ(a) = ½(1 + tanh(a/2)): exact in float64 on MLX (mx.sigmoid goes through a float32-accurate exp)."""
    return 0.5 * (1.0 + mx.tanh(0.5 * a))


def transposed(weight: mx.array) -> mx.array:
    """Wᵀ as a row-contiguous array: x @ Wᵀ then runs as a plain (NN) GEMM, faster on the CPU than with the transposed
    view."""
    return mx.contiguous(weight.T)


def project(x: mx.array, weight: mx.array, bias: mx.array | None = None) -> mx.array:
    """x Wᵀ (+ b) for all T steps at once, (T, B, rows): ONE GEMM outside the time loop."""
    T, B, I = x.shape
    out = x.reshape(T * B, I) @ transposed(weight)
    if bias is not None:
        out = out + bias
    return out.reshape(T, B, weight.shape[0])


def rows(a: mx.array) -> mx.array:
    """(T, B, …) → (T·B, …): every (t, b) as one row, for the weight-gradient GEMMs."""
    return a.reshape((a.shape[0] * a.shape[1],) + tuple(a.shape[2:]))


def complex_from(re: mx.array, im: mx.array) -> mx.array:
    """re + i·im as complex64 (exact: no rounding in the assembly)."""
    return re + 1j * im


# ------------------------------------------------------------------------------------------------ Metal kernels

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


def metal_enabled() -> bool:
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
