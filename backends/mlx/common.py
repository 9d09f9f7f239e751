"""Shared pieces of the MLX backend: the float64 policy, evaluation at the boundary, and small math helpers.

MLX arrays are lazy: an expression builds a graph and nothing runs until `mx.eval`. Every kernel of this package is
wrapped by `@kernel`, which evaluates the whole output tree before returning it, so a caller (and a timer) always gets
computed arrays, exactly like the NumPy reference.

Precision notes (measured on mlx 0.32 CPU, the reason for the helpers below):
    - float64 exists on the CPU stream only (MLX's GPU back-ends have no double type): `@kernel` refuses float64
      inputs when the default device is a GPU, with the reason, instead of downcasting them. The FPTT kernels, whose
      carriers are float64 in every dtype (the reference's default), run on the CPU stream (mx.cpu) as a whole.
    - in float64, mx.tanh, mx.log and mx.expm1 are accurate to ~1 ulp, but mx.exp (hence mx.sigmoid), mx.sin and
      mx.cos are only float32-accurate (relative error ~1e-6). So σ(a) is written ½(1 + tanh(a/2)) — the reference's
      own formula — and the float64 paths use no exp, sin or cos. (The LRU, which needs exp of a complex number, runs
      in complex64 only: MLX has no complex128.)
    - complex64 matmul exists, but a real input times a complex matrix is done as two real GEMMs (half the flops of
      the promoted complex GEMM).
"""

from __future__ import annotations

import contextlib
import functools

import mlx.core as mx

from refimpl.errors import UnsupportedError
from refimpl.registry import map_arrays

def float64_reason() -> str:
    """Why float64 inputs are refused here ("" when they are not): MLX runs float64 on its CPU stream only."""
    if mx.default_device() == mx.cpu:
        return ""
    return (f"MLX runs float64 only on its CPU stream (its GPU back-ends have no double type) and the default device "
            f"is {mx.default_device()}; call mx.set_default_device(mx.cpu) before the kernel, or use float32")


def _leaves(tree) -> list:
    out = []
    map_arrays(out.append, tree)
    return out


def kernel(fn=None, *, float64_carriers: bool = False):
    """Decorator of every kernel: refuse float64 inputs on a GPU default device (with the reason), and return the
    output tree evaluated (mx.eval), so nothing lazy leaves the kernel.

    float64_carriers: the kernel runs float64 arithmetic whatever its inputs' dtype (FPTT's carriers, as the
    reference's default carrier="float64"), so it runs on the CPU stream in every dtype.
    """
    def wrap(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            if any(getattr(a, "dtype", None) == mx.float64 for a in _leaves((args, kwargs))):
                why = float64_reason()
                if why:
                    raise UnsupportedError(f"MLX kernel {f.__name__} cannot run float64 inputs here: {why}")
            with mx.stream(mx.cpu) if float64_carriers else contextlib.nullcontext():
                out = f(*args, **kwargs)
                mx.eval(_leaves(out))
            return out
        return wrapper
    return wrap(fn) if fn is not None else wrap


def sigmoid(a: mx.array) -> mx.array:
    """σ(a) = ½(1 + tanh(a/2)): exact in float64 on MLX (mx.sigmoid goes through a float32-accurate exp)."""
    return 0.5 * (1.0 + mx.tanh(0.5 * a))


def param_grads(params: dict, computed: dict) -> dict:
    """The gradients in the parameters' order, each in its parameter's dtype."""
    return {k: computed[k].astype(v.dtype) for k, v in params.items()}


def transposed(weight: mx.array) -> mx.array:
    """Wᵀ as a row-contiguous array: x @ Wᵀ then runs as a plain (NN) GEMM, about twice as fast on the CPU as with
    the transposed view."""
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


def shifted(first: mx.array, seq: mx.array) -> mx.array:
    """[first, seq_0, …, seq_{T-2}]: the states before each step, h_prev (T, B, ·) from h0 and h."""
    return mx.concatenate([first[None], seq[:-1]], axis=0)


def complex_from(re: mx.array, im: mx.array) -> mx.array:
    """re + i·im as complex64 (exact: no rounding in the assembly)."""
    return re + 1j * im
