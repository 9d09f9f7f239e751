"""What defines a training run (TrainConfig, stored as its config.json) and what it reports (RunResult, result.json).

The field names are part of the run-directory format (refimpl/runs.py): a run directory written by this version must
resume under the next, so fields are added with defaults and never renamed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import optim
from ..checks import positive_int
from ..errors import UnknownNameError, UnsupportedError
from ..ep import TOY_SIZES
from ..runs import config_from_dict


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. Stored as config.json; `TrainConfig.from_dict(json.load(...))` restores it."""
    task: str = "digits-seq"
    task_options: dict = field(default_factory=dict)
    data_dir: str | None = None
    cell: str = "lru"
    cell_options: dict = field(default_factory=dict)
    algorithm: str = "bptt"
    algorithm_options: dict = field(default_factory=dict)   # e.g. fptt: {"passes": 2, "carrier": "state"}
    backend: str = "numpy"
    layers: int = 1
    hidden: int = 32
    d_model: int | None = None
    encoder: bool = False
    norm: str | None = None
    ffn: str | None = None
    residual: bool = False
    dropout: float = 0.0                 # training only: the rate of refimpl.nn.model.dropout_masks (0: none)
    pooling: str = "none"
    dtype: str = "float64"
    seed: int = 0
    epochs: int = 10
    steps: int | None = None            # total optimizer steps; overrides epochs when given
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.01
    rec_lr_factor: float = 1.0
    freeze: tuple = ()                   # leaf names of cell parameters that do not learn (optim.OptimConfig.freeze);
                                         # FREEZE_RECURRENCE is the FPTT code's freeze_recurrence
    clip_norm: float | None = 1.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    log_every: int = 10
    checkpoint_every: int | None = None  # steps; None = at the end of every epoch
    update_every: int | None = None      # algorithms that update inside a sequence (the RTRL family, tbptt): update
                                         # the weights every k time steps (problems.check_online says what is refused)
    chunk: int | None = None             # streaming algorithms: run C steps per kernel call (None: the driver's
                                         # default, 1 on NumPy and min(256, T) on a backend); results independent of C
    micro_batch: int | None = None       # split each batch into M micro-batches, gradients combined exactly
    net: str = "prototypical"            # static tasks only: the EP network: prototypical | energy | toy | conv
    net_options: dict = field(default_factory=dict)   # its options: activation, dt, clamp

    def __post_init__(self):
        if isinstance(self.freeze, list):                    # config.json keeps it as a list
            object.__setattr__(self, "freeze", tuple(self.freeze))

    @classmethod
    def from_dict(cls, d: dict, source=None) -> "TrainConfig":
        return config_from_dict(cls, d, source)


@dataclass
class RunResult:
    run_dir: str
    steps: int
    train_loss: float
    val_loss: float
    val_accuracy: float | None
    test_loss: float
    test_accuracy: float | None
    time_s: float
    peak_memory_bytes: int | None = None


#: The FPTT code's `freeze_recurrence`: a stop-gradient on the LRU's λ, so ν and θ stay at
#: their initial values while γ, B, C, D and the rest train (`--freeze-recurrence`; `--rec-lr-factor 0` fixes γ and B
#: too).
FREEZE_RECURRENCE = ("nu_log", "theta_log")


def check_freeze(freeze, params: dict, cell: str) -> tuple:
    """The names of `freeze` as a tuple, after checking each is the leaf name of a cell parameter of `params` (the
    recurrent group of refimpl/optim.py); UnknownNameError naming the cell's parameters otherwise."""
    names = tuple(freeze)
    leaves = sorted({k.rsplit(".", 1)[-1] for k in params if optim.is_recurrent(k)})
    for name in names:
        if name not in leaves:
            hint = (" (--freeze-recurrence is the LRU's ν and θ; name this cell's parameters with --freeze)"
                    if name in FREEZE_RECURRENCE else "")     # (the lru has them: not here)
            raise UnknownNameError(f"parameter to freeze of cell {cell!r}", name, leaves,
                                   f"--freeze takes the cell's parameter names, comma-separated{hint}")
    return names


#: The options that may change when a run is resumed: the run's length (a longer run continues where the killed one
#: stopped; with the cosine schedule the learning rate of the remaining steps follows the new length) and where the
#: data lives (not what it is). Everything else would make the resumed run another run than the stored one.
RESUME_CHANGES = ("epochs", "steps", "data_dir")


def check_config(config: TrainConfig) -> None:
    """Refuse counts and sizes that are not positive integers (the task, model and algorithm check their own)."""
    for name in ("layers", "hidden", "epochs", "batch_size", "log_every"):
        positive_int(name, getattr(config, name))
    for name in ("steps", "checkpoint_every"):
        if getattr(config, name) is not None:
            positive_int(name, getattr(config, name))
    if isinstance(config.dropout, bool) or not isinstance(config.dropout, (int, float)) or \
            not 0 <= config.dropout < 1:
        raise UnsupportedError(f"--dropout {config.dropout!r} is not allowed: it must lie in [0, 1); 0 turns it off "
                               f"(the online-LRU paper trains with 0.1)")
    for name in ("update_every", "chunk", "micro_batch"):     # the run options' names as the CLI spells them
        if getattr(config, name) is not None:
            positive_int("--" + name.replace("_", "-"), getattr(config, name))


#: Equilibrium propagation where the caller does not say: free-phase steps T, nudged steps K, nudge strength β, and
#: the layer sizes (input first) of the ep-curves / ep-recipe studies. The networks' own defaults (activation, dt,
#: clamp, the toy network's sizes) are refimpl.ep's.
#:   train    training on a static task (`train --algorithm ep|bptt`; -a T=… -a K=… -a beta=…)
#:   toy      the studies on the toy network (the GDU paper's toy runs: a long free phase and a small β)
#:   digits   the studies on the energy or prototypical network, fed the 8×8 digits (64 inputs, 10 classes)
EP_SETTINGS = {
    "train": {"T": 30, "K": 10, "beta": 0.5},
    "toy": {"T": 5000, "K": 80, "beta": 0.01, "sizes": TOY_SIZES},
    "digits": {"T": 40, "K": 10, "beta": 0.05, "sizes": (64, 64, 10)},
}
