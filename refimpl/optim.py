r"""Optimizers written out by hand: SGD (with momentum), Adam, AdamW; global-norm clipping; warm-up + cosine schedule.

Parameters are a flat dict ``{dotted name: ndarray}`` (DESIGN.md §3); gradients use the same keys. A gradients dict may
hold extra keys (``"x"``, ``"h0"`` …): every function here looks only at the names of the parameters and ignores the rest.
Everything is pure: ``step`` returns new parameter and state dicts and never writes into its arguments.

Symbols: s the number of updates done so far (``state["step"]``, counted from 0), k = s + 1 the index of the update
being made, η the base learning rate, λ the weight decay, ρ the recurrent learning-rate factor, c the clipping norm,
S_w the warm-up steps, S the total steps, r the final learning-rate ratio, μ the SGD momentum, β1, β2, ε Adam's constants.

Learning-rate schedule (``lr_at``):

    (1)  η_s = η · s / S_w                                                  for s < S_w   (linear warm-up from 0)
    (2)  η_s = η · (r + (1 − r) · ½ (1 + cos(π p))),  p = min(1, (s − S_w) / (S − S_w))   for s ≥ S_w  ("cosine")
         η_s = η                                                            for s ≥ S_w   ("constant")

Parameter groups (``is_recurrent``, ``group_hyperparameters``):

    (3)  recurrent parameter (a name with a ``cell`` component, e.g. ``layers.0.cell.nu_log``):  η_i = ρ η_s,  λ_i = 0
         any other parameter (encoder, norms, the LRU's C/D, readout):                             η_i = η_s,   λ_i = λ
         a frozen parameter (a recurrent one whose leaf name is in ``freeze``, e.g. ``nu_log``):  not updated at all

Frozen parameters (``freeze``, ``is_frozen``) are what a stop-gradient on them would give: their gradients are
dropped before anything else (they count neither in the norm (4) nor in clipping (5)), and the parameters and their
optimizer state come back as they were, bit for bit. The FPTT code's ``freeze_recurrence`` is freeze = ("nu_log",
"theta_log"): λ fixed, γ, B and the rest still learning; ρ = 0 instead fixes every cell
parameter (γ and B too) and still counts their gradients in the clipping norm.

Global-norm clipping (``global_norm``, ``clip_by_global_norm``), applied to the raw gradients before any decay term:

    (4)  ‖g‖ = sqrt(Σ_i Σ_j g_i[j]²)                                         over every parameter i
    (5)  g_i ← g_i · c / ‖g‖                                                  only if ‖g‖ > c (so the new norm is exactly c)

SGD (as ``torch.optim.SGD`` with dampening 0, no Nesterov; weight decay coupled as an L2 term):

    (6)  g ← g + λ_i p
    (7)  b ← μ b + g                                                          (b starts at 0; no buffer when μ = 0: b = g)
    (8)  p ← p − η_i b

Adam / AdamW (as ``torch.optim.Adam`` / ``torch.optim.AdamW``, amsgrad off):

    (9)  g ← g + λ_i p                                                        "adam": decay coupled as L2 in the gradient
    (10) p ← p (1 − η_i λ_i)                                                  "adamw": decoupled decay, before the Adam step
    (11) m ← β1 m + (1 − β1) g
    (12) v ← β2 v + (1 − β2) g²
    (13) m̂ = m / (1 − β1^k),   v̂ = v / (1 − β2^k)
    (14) p ← p − η_i m̂ / (√v̂ + ε)

Why these groups. Both seeds keep weight decay off the recurrence and let it learn at its own rate: online-LRU
(research/online_lru.md §5, ``standard``) puts ν, θ, γ_log and B of the LRU under plain Adam at ``lr_factor · lr`` with
no decay and the rest under AdamW; FPTT (research/fptt.md §5.1) does the same for B, ν_log, θ_log (its γ_log stays in the
AdamW group). refimpl takes one rule for every cell: the cell's own parameters (all of ``layers.{l}.cell.*``: for the
LRU ν_log, θ_log, γ_log, B_re, B_im; for rnn/gru/lstm weight_ih, weight_hh, bias_ih, bias_hh) are the recurrent group.
Decay pulls ν_log, θ_log, γ_log towards 0, that is |λ| towards e^{−1} and γ towards 1, which has nothing to do with
a prior on small weights; the layer's output map (C_re, C_im, D), norms and readout are ordinary weights and are decayed.
With "adamw" the recurrent group is plain Adam (λ_i = 0), exactly the seeds' split; ρ = 0 freezes the recurrence.

NOTE: (5) scales by exactly c/‖g‖ as optax does; ``torch.nn.utils.clip_grad_norm_`` divides by ‖g‖ + 1e-6 instead.
NOTE: (1) gives η_0 = 0 when S_w > 0, so the first update is a no-op for Adam's parameters (its moments still move), as
in optax's ``warmup_cosine_decay_schedule``. Past S the cosine schedule stays at r·η.
NOTE: each parameter keeps its dtype; gradients are cast to it and the moments are stored in it (float32 stays
float32). The norm (4) is accumulated in float64: always for NumPy; in another namespace in its float64 if it has one,
else in the gradients' dtype. Complex parameters are not supported (refimpl's are all real).

The arrays may be NumPy's or a backend's (CuPy, MLX through its adapter): the functions take the namespace from the
parameters, xp = namespace(*params) (refimpl/arrays.py), use only the vocabulary listed there, and never read a
value back to the host, so an update on a device stays there. Hence (5) is written without a branch, as
g_i ← g_i · c / max(‖g‖, c) (the factor is exactly 1 below the threshold), and ``grad_norm`` / ``clipped`` of the
update's info are 0-d arrays of the namespace (for NumPy NumPy scalars; float() them where they are logged). The
schedule (1)–(2) and the groups (3) are host arithmetic on Python floats; the step counter ``state["step"]`` is a
host NumPy integer in every namespace. A non-finite norm raises NumericalError for NumPy arrays; in another
namespace it is not read (that would stall the device every step): a NaN or inf gradient then makes the update
non-finite, which the caller sees when it checks the new parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from .arrays import is_numpy, namespace
from .errors import DTypeError, NumericalError, ShapeError, UnknownNameError, UnsupportedError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer, its hyperparameters and the learning-rate schedule. Checked on construction.

    name            "sgd" | "adam" | "adamw"
    lr              base learning rate η > 0 (the peak of the schedule)
    weight_decay    λ ≥ 0 for the non-recurrent group (coupled L2 for sgd/adam, decoupled for adamw)
    beta1, beta2    Adam's moment decay rates, in [0, 1)
    eps             Adam's ε > 0
    momentum        SGD's μ in [0, 1); 0 keeps no momentum buffer
    rec_lr_factor   ρ ≥ 0: the recurrent group learns at ρ·η (0 freezes it)
    freeze          leaf names of recurrent parameters that do not learn at all (e.g. ("nu_log", "theta_log"): the
                    LRU's λ); see "Frozen parameters" in the module doc
    clip_norm       c > 0 clips the global gradient norm to c; None or 0 turns clipping off
    schedule        "constant" | "cosine"
    warmup_steps    S_w ≥ 0 steps of linear warm-up from 0
    min_lr_ratio    r in [0, 1]: the cosine schedule ends at r·η
    total_steps     S ≥ 1: the step at which the cosine schedule reaches r·η (must exceed S_w for "cosine")
    """
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.0
    rec_lr_factor: float = 1.0
    freeze: tuple = ()
    clip_norm: float | None = 1.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    total_steps: int = 1

    def __post_init__(self):
        check_config(self)


def _real(config, field: str) -> float:
    value = getattr(config, field)
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise UnsupportedError(f"optimizer {field} must be a finite real number, got {value!r}; "
                               f"pass e.g. {field}={getattr(OptimConfig, field)!r}")
    return float(value)


def _integer(config, field: str) -> int:
    value = getattr(config, field)
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise UnsupportedError(f"optimizer {field} must be an integer, got {value!r}; pass a whole number of steps")
    return int(value)


def check_config(config: OptimConfig) -> None:
    """Raise UnknownNameError / UnsupportedError (saying what is allowed and how to fix it) for a bad config."""
    if config.name not in OPTIMIZERS:
        raise UnknownNameError("optimizer", config.name, OPTIMIZERS)
    if config.schedule not in SCHEDULES:
        raise UnknownNameError("learning-rate schedule", config.schedule, SCHEDULES)
    if _real(config, "lr") <= 0:
        raise UnsupportedError(f"learning rate lr={config.lr!r} is not allowed: it must be > 0; pass e.g. lr=1e-3")
    if _real(config, "weight_decay") < 0:
        raise UnsupportedError(f"weight_decay={config.weight_decay!r} is not allowed: it must be ≥ 0; "
                               "pass 0 for no decay")
    for field in ("beta1", "beta2"):
        if not 0.0 <= _real(config, field) < 1.0:
            raise UnsupportedError(f"{field}={getattr(config, field)!r} is not allowed: it must lie in [0, 1); "
                                   "the usual values are beta1=0.9, beta2=0.999")
    if _real(config, "eps") <= 0:
        raise UnsupportedError(f"eps={config.eps!r} is not allowed: it must be > 0 (it keeps Adam's division finite "
                               "when a gradient is zero); pass e.g. eps=1e-8")
    if not 0.0 <= _real(config, "momentum") < 1.0:
        raise UnsupportedError(f"momentum={config.momentum!r} is not allowed: it must lie in [0, 1); "
                               "pass 0 for plain SGD or e.g. 0.9")
    if _real(config, "rec_lr_factor") < 0:
        raise UnsupportedError(f"rec_lr_factor={config.rec_lr_factor!r} is not allowed: it must be ≥ 0; "
                               "pass 1 for the same rate as the other parameters, 0 to freeze the recurrence")
    if not isinstance(config.freeze, (tuple, list)) or not all(isinstance(n, str) and n for n in config.freeze):
        raise UnsupportedError(f"freeze={config.freeze!r} is not allowed: it must be a tuple of parameter leaf names, "
                               "e.g. freeze=('nu_log', 'theta_log')")
    if config.clip_norm is not None and _real(config, "clip_norm") < 0:
        raise UnsupportedError(f"clip_norm={config.clip_norm!r} is not allowed: it must be > 0 to clip, "
                               "or None / 0 for no clipping")
    if _integer(config, "warmup_steps") < 0:
        raise UnsupportedError(f"warmup_steps={config.warmup_steps!r} is not allowed: it must be ≥ 0; "
                               "pass 0 for no warm-up")
    if not 0.0 <= _real(config, "min_lr_ratio") <= 1.0:
        raise UnsupportedError(f"min_lr_ratio={config.min_lr_ratio!r} is not allowed: it must lie in [0, 1]; "
                               "pass e.g. 0 to decay to zero")
    if _integer(config, "total_steps") < 1:
        raise UnsupportedError(f"total_steps={config.total_steps!r} is not allowed: it must be ≥ 1; "
                               "pass the number of optimizer steps of the run")
    if config.schedule == "cosine" and config.warmup_steps >= config.total_steps:
        raise UnsupportedError(f"the cosine schedule must have warmup_steps < total_steps, got {config.warmup_steps} ≥ "
                               f"{config.total_steps}; raise total_steps to the run's number of steps, lower "
                               "warmup_steps, or use schedule='constant'")


def is_recurrent(name: str) -> bool:
    """True for a cell's own parameters: a dotted name with a ``cell`` component before the leaf (eq. 3).

    ``layers.0.cell.nu_log``, ``layers.1.cell.weight_hh`` → True; ``layers.0.C_re``, ``readout.weight`` → False.
    """
    return "cell" in name.split(".")[:-1]


def is_frozen(name: str, config: OptimConfig) -> bool:
    """True for a recurrent parameter whose leaf name is in ``config.freeze`` (``layers.0.cell.nu_log`` with
    freeze = ("nu_log",)); such a parameter is not updated (module doc, "Frozen parameters")."""
    return is_recurrent(name) and name.rsplit(".", 1)[-1] in config.freeze


def group_hyperparameters(name: str, lr: float, config: OptimConfig) -> tuple[float, float]:
    """(η_i, λ_i) of parameter ``name`` when the scheduled base rate is ``lr`` (eq. 3)."""
    if is_recurrent(name):
        return lr * config.rec_lr_factor, 0.0                                              # (3)
    return lr, config.weight_decay                                                         # (3)


def lr_at(step: int, config: OptimConfig) -> float:
    """The base learning rate η_s for the update made after ``step`` updates (step counts from 0; eqs. 1–2)."""
    s = int(step)
    if s < 0:
        raise UnsupportedError(f"step={step!r} is not allowed: steps count from 0")
    if s < config.warmup_steps:
        return config.lr * s / config.warmup_steps                                         # (1)
    if config.schedule == "constant":
        return float(config.lr)                                                            # (2) constant
    p = min(1.0, (s - config.warmup_steps) / (config.total_steps - config.warmup_steps))   # (2) progress
    r = config.min_lr_ratio
    return config.lr * (r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * p)))               # (2)


def _as(xp, a, dtype):
    """a in dtype, not copied when it already has it."""
    return a if a.dtype == dtype else xp.astype(a, dtype)


def _accumulation_dtype(xp, g):
    """The dtype the norm (4) is summed in: float64 for NumPy; another namespace's float64 if it has one, else g's."""
    if is_numpy(xp):
        return xp.float64
    float64 = getattr(xp, "float64", None)
    return g.dtype if float64 is None else float64


def global_norm(grads: dict, names):
    """‖g‖ over the arrays ``grads[name]`` for ``name`` in ``names`` (eq. 4), accumulated in float64 (see the NOTE).

    Returns a 0-d array of the gradients' namespace (for NumPy a np.float64, which is a Python float)."""
    names = list(names)
    xp = namespace(*(grads[name] for name in names))
    total = 0.0
    for name in names:
        g = xp.asarray(grads[name])
        g = _as(xp, g, _accumulation_dtype(xp, g))
        total = total + xp.sum(g * g)                                                      # (4)
    return xp.sqrt(xp.asarray(total))                                                      # (4)


def _scale_to(grads: dict, names, max_norm: float, norm) -> dict:
    """(5) without a branch: g_i · c / max(‖g‖, c), a factor of exactly 1 when ‖g‖ ≤ c (no value is read)."""
    xp, c = namespace(norm), float(max_norm)                        # c: a host number (the config's threshold)
    factor = c / xp.clip(norm, c, None)                                                    # (5) c / max(‖g‖, c)
    return {name: grads[name] * _as(xp, factor, grads[name].dtype) for name in names}     # (5)


def clip_by_global_norm(grads: dict, names, max_norm: float) -> tuple[dict, object]:
    """Scale ``grads[name]`` for ``name`` in ``names`` so that their global norm is at most ``max_norm`` (eq. 5).

    Returns (a new dict holding only ``names``, the norm before clipping as a 0-d array). Below the threshold the
    arrays are multiplied by exactly 1 (their values unchanged). The inputs are never modified.
    """
    if not max_norm > 0:
        raise UnsupportedError(f"max_norm={max_norm!r} is not allowed: it must be > 0")
    names = list(names)
    norm = global_norm(grads, names)                                                       # (4)
    return _scale_to(grads, names, max_norm, norm), norm                                   # (5)


def _is_real_floating(xp, dtype) -> bool:
    if is_numpy(xp):
        return np.issubdtype(dtype, np.floating)
    return dtype == xp.float32 or dtype == xp.float64


def _check_params(params: dict):
    """The parameters' namespace, after checking that every parameter is a real floating array of it."""
    xp = namespace(*params.values())
    for name, p in params.items():
        dtype = xp.asarray(p).dtype
        if not _is_real_floating(xp, dtype):
            raise DTypeError(f"parameter {name!r} has dtype {dtype}; the optimizers take real "
                             "floating-point parameters (float32 or float64)")
    return xp


def _state_keys(name: str, config: OptimConfig) -> tuple[str, ...]:
    if config.name == "sgd":
        return (f"momentum/{name}",) if config.momentum > 0 else ()
    return (f"m/{name}", f"v/{name}")


def init_state(params: dict, config: OptimConfig) -> dict:
    """A flat dict of arrays (saveable with np.savez): ``step`` (0-d NumPy int64) and, per parameter, ``m/<name>`` and
    ``v/<name>`` (adam, adamw) or ``momentum/<name>`` (sgd with momentum > 0), zeros of the parameter's shape and dtype
    in the parameters' namespace."""
    xp = _check_params(params)
    state = {"step": np.array(0, dtype=np.int64)}                                 # a host counter in every namespace
    for name, p in params.items():
        for key in _state_keys(name, config):
            state[key] = xp.zeros_like(xp.asarray(p))
    return state


def _gradient(xp, grads: dict, name: str, p):
    if name not in grads:
        raise UnsupportedError(f"no gradient for parameter {name!r}; the gradients must hold every parameter name "
                               "(pass zeros for a parameter that gets no gradient)")
    g = grads[name]
    if not hasattr(g, "shape"):
        g = xp.asarray(g)                                         # a Python number or list (host values)
    if tuple(g.shape) != tuple(p.shape):
        raise ShapeError(f"gradient of {name!r} has shape {tuple(g.shape)}, the parameter has shape "
                         f"{tuple(p.shape)}; they must be equal")
    return _as(xp, g, p.dtype)


def step(params: dict, grads: dict, state: dict, config: OptimConfig):
    """One optimizer update (pure). Clip (eqs. 4–5), schedule (eqs. 1–2), groups (eq. 3), then sgd (6–8) or
    adam/adamw (9–14).

    Args:
        params: {name: array} — every parameter, real float32/float64, all in one namespace.
        grads:  {name: array of the parameter's shape, in its namespace} — must hold every parameter; extra keys are
                ignored.
        state:  from ``init_state`` (or a previous ``step``, or np.load of a saved state) for the same params/config.
        config: OptimConfig.
    Returns:
        (new_params, new_state, info) with info = {"lr": η_s (base rate used, a Python float), "grad_norm": ‖g‖
        before clipping (a 0-d array of the namespace), "clipped": whether (5) scaled the gradients (a 0-d bool
        array; False when clipping is off)}.
    Raises:
        NumericalError if the gradient norm is not finite (nothing is updated) — NumPy arrays only; see the NOTE.
    """
    xp = _check_params(params)
    names = [name for name in params if not is_frozen(name, config)]        # frozen ones: dropped, kept as they are
    g_all = {name: _gradient(xp, grads, name, params[name]) for name in names}
    for key in ("step",) + tuple(k for name in names for k in _state_keys(name, config)):
        if key not in state:
            raise UnsupportedError(f"optimizer state has no entry {key!r}: it was made for other parameters or "
                                   f"another optimizer than {config.name!r}; build it with init_state(params, config)")
    norm = global_norm(g_all, names)                                                       # (4)
    if is_numpy(xp) and not math.isfinite(norm):          # a host value; a device's norm is not read (see the NOTE)
        raise NumericalError(f"the gradient norm is {norm} (a NaN or inf in the gradients); the update was not "
                             "applied — lower the learning rate, clip harder, or check the inputs")
    clipped = False
    if config.clip_norm:
        clipped = norm > config.clip_norm                                                  # a 0-d bool array
        g_all = _scale_to(g_all, names, config.clip_norm, norm)                            # (5)

    s = int(state["step"])
    k = s + 1
    lr = lr_at(s, config)                                                                  # (1)–(2)
    new_params = {name: p for name, p in params.items() if name not in g_all}                # frozen: unchanged
    new_state = {key: state[key] for name in new_params for key in _state_keys(name, config)}
    new_state["step"] = np.array(k, dtype=np.int64)
    for name in names:
        p, g = params[name], g_all[name]
        lr_i, wd_i = group_hyperparameters(name, lr, config)                               # (3)
        if config.name == "sgd":
            if wd_i:
                g = g + wd_i * p                                                           # (6)
            if config.momentum > 0:
                buf = config.momentum * state[f"momentum/{name}"] + g                      # (7)
                new_state[f"momentum/{name}"] = buf
            else:
                buf = g                                                                    # (7) with μ = 0
            new_params[name] = p - lr_i * buf                                              # (8)
            continue
        if config.name == "adam" and wd_i:
            g = g + wd_i * p                                                               # (9)
        if config.name == "adamw" and wd_i:
            p = p * (1.0 - lr_i * wd_i)                                                    # (10)
        m = config.beta1 * state[f"m/{name}"] + (1.0 - config.beta1) * g                   # (11)
        v = config.beta2 * state[f"v/{name}"] + (1.0 - config.beta2) * (g * g)             # (12)
        m_hat = m / (1.0 - config.beta1 ** k)                                              # (13)
        v_hat = v / (1.0 - config.beta2 ** k)                                              # (13)
        new_params[name] = p - lr_i * m_hat / (xp.sqrt(v_hat) + config.eps)                # (14)
        new_state[f"m/{name}"], new_state[f"v/{name}"] = m, v
    new_params = {name: new_params[name] for name in params}                                # the parameters' order
    return new_params, new_state, {"lr": lr, "grad_norm": norm, "clipped": clipped}
