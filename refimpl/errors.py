"""Errors raised for user mistakes and numerical failures (DESIGN.md §8).

Every message says three things: what was wrong, what is allowed, and how to fix it.
The CLI turns any `RefimplError` into one line on stderr and exit status 2.

    RefimplError                 base class of everything below
    ├── UnknownNameError         an unknown cell / algorithm / backend / loss / option name  (ValueError)
    ├── ShapeError               an array has the wrong shape                                (ValueError)
    ├── DTypeError               an array has the wrong dtype                                (TypeError)
    ├── NonFiniteError           an input holds NaN or inf                                   (ValueError)
    ├── UnsupportedError         a known but unsupported combination, with the reason       (ValueError)
    │   └── TooBigError          a run whose largest arrays would not fit in memory (estimate and knob)
    ├── RunFileError             a run directory's file is damaged or not refimpl's (names the file)  (ValueError)
    └── NumericalError           a computation blew up (non-finite state, loss or gradient)  (ArithmeticError)

    BpfreeWarning                (a UserWarning) a backprop-free combination that runs but is known to learn badly
"""

from __future__ import annotations

import difflib


class RefimplError(Exception):
    """Base class of all errors refimpl raises on purpose."""


class UnknownNameError(RefimplError, ValueError):
    """A name (cell, algorithm, backend, loss, pooling, option …) that refimpl does not know."""

    def __init__(self, kind: str, name: object, allowed, hint: str = ""):
        allowed = sorted(str(a) for a in allowed)
        close = difflib.get_close_matches(str(name), allowed, n=1)
        msg = f"unknown {kind} {name!r}; allowed: {', '.join(allowed)}"
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)
        self.kind, self.name, self.allowed = kind, name, allowed


class ShapeError(RefimplError, ValueError):
    """An array with the wrong number of dimensions or the wrong size along an axis."""


class DTypeError(RefimplError, TypeError):
    """An array with a dtype that does not match the cell / model."""


class NonFiniteError(RefimplError, ValueError):
    """An input that contains NaN or inf."""


class UnsupportedError(RefimplError, ValueError):
    """A known name used in a combination that is not supported; the message says why and what to use instead."""


class TooBigError(UnsupportedError):
    """A run whose largest arrays (parameters, states, traces, Jacobians), estimated before anything is allocated,
    would not fit in memory; the message gives the estimate and the option to turn."""


class RunFileError(RefimplError, ValueError):
    """A file of a run directory (config.json, checkpoint.npz, metrics.jsonl) that is empty, truncated, damaged or
    not what refimpl writes; the message names the file and says to delete the directory or start a new --out."""


class NumericalError(RefimplError, ArithmeticError):
    """A computation produced non-finite values (a blow-up); never silently returned."""


class BpfreeWarning(UserWarning):
    """A combination that runs but is known to learn badly (e.g. DRTP with an unbounded activation)."""
