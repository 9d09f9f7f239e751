"""The EP activations ρ and their first two derivatives, for every EP network (refimpl/ep/networks.py eq. (1)) and the
convolutional one (refimpl/ep/conv.py); the backends' EP relaxations use them too.

    tanh      ρ(s) = tanh(s)
    sigm      ρ(s) = 1 / (1 + e^{−4(s−½)})        written as ½(1 + tanh(2(s − ½))) so that it never overflows
    hardsigm  ρ(s) = clip(s, 0, 1)                 ρ' = 1 on [0, 1] (0 outside), ρ'' = 0 almost everywhere
"""

from __future__ import annotations

import numpy as np

#: the activations EP networks accept
ACTIVATIONS = ("tanh", "sigm", "hardsigm")


def rho(s: np.ndarray, act: str) -> np.ndarray:
    if act == "tanh":
        return np.tanh(s)
    if act == "sigm":
        return 0.5 * (1.0 + np.tanh(2.0 * (s - 0.5)))        # 1/(1+e^{−4(s−½)}) without overflow
    return np.clip(s, 0.0, 1.0)


def drho(s: np.ndarray, act: str) -> np.ndarray:
    if act == "tanh":
        r = np.tanh(s)
        return 1.0 - r * r
    if act == "sigm":
        r = rho(s, act)
        return 4.0 * r * (1.0 - r)
    return ((s >= 0.0) & (s <= 1.0)).astype(s.dtype)


def d2rho(s: np.ndarray, act: str) -> np.ndarray:
    if act == "tanh":
        r = np.tanh(s)
        return -2.0 * r * (1.0 - r * r)
    if act == "sigm":
        r = rho(s, act)
        return 16.0 * r * (1.0 - r) * (1.0 - 2.0 * r)
    return np.zeros_like(s)                                   # hardsigm: ρ'' = 0 almost everywhere
