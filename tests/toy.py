"""Scalar helpers for the hand-worked trajectories (tests/test_toy_*.py): plain-Python math, no refimpl code."""

import math


def sigma(a: float) -> float:
    """The logistic function, written out: 1 / (1 + e^{−a})."""
    return 1.0 / (1.0 + math.exp(-a))


def check_pencil(value: float, pencil: float) -> float:
    """The hand-written 6-decimal value in the comment must be the value the arithmetic gives; returns `value`."""
    assert abs(value - pencil) < 5e-7, f"hand value {value:.8f} != pencil value {pencil}"
    return value
