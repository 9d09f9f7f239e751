"""Recipes: the published comparisons as ready-made `compare` runs (`python -m refimpl.run compare --recipe NAME`).

Each recipe fixes a task, a model and the algorithms the original work compared; options given on the command line
override the recipe's (apply_recipe).

    fptt-digits    the FPTT paper's comparison (Zucchet, Pourcel & Ernoult 2026; their MNIST98 table) moved to
                   sequential digits: 4-layer LRU, 32 units per layer, MLP blocks, cumulative-mean pooling,
                   AdamW, recurrent lr factor 0.5, r_min 0.9; BPTT vs FPTT vs spatial
    fptt-mnist98   the same on MNIST98 (needs the MNIST IDX files: --data-dir or REFIMPL_MNIST_DIR)
    copy-lru       the online-LRU copy-task comparison (Zucchet et al. 2023, Table 1 / Figure 2): LRU stack with GLU
                   blocks, pre-norm and residuals on the 20×7-bit copy task; bptt vs online vs truncated vs spatial
    ep-digits      EP vs BPTT on static digits (Ernoult et al. 2019) with a prototypical network, from identical weights

DEMO holds the learning half of the default job (`python -m refimpl.run` without a command), one comparison per cell.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import UnknownNameError
from ..registry import fastest_backend
from .config import TrainConfig


@dataclass(frozen=True)
class Recipe:
    about: str
    config: dict                        # TrainConfig fields
    algorithms: tuple


_FPTT = dict(cell="lru", layers=4, hidden=32, encoder=True, d_model=32, ffn="mlp", pooling="cumulative_mean",
             optimizer="adamw", lr=3e-3, weight_decay=0.01, rec_lr_factor=0.5, clip_norm=1.0, schedule="cosine",
             cell_options={"r_min": 0.9, "r_max": 0.999}, batch_size=32)

RECIPES: dict[str, Recipe] = {
    "fptt-digits": Recipe("FPTT paper comparison on sequential digits (4-layer LRU, cumulative-mean pooling)",
                          dict(task="digits-seq", task_options={"mode": "pixel"}, epochs=20, **_FPTT),
                          ("bptt", "fptt", "spatial")),
    "fptt-mnist98": Recipe("FPTT paper comparison on MNIST98 (4-layer LRU, cumulative-mean pooling)",
                           dict(task="mnist98", epochs=3, **_FPTT), ("bptt", "fptt", "spatial")),
    "copy-lru": Recipe("online-LRU copy-task comparison (LRU stack with GLU blocks)",
                       dict(task="copy", task_options={"seq_len": 20, "bit_width": 7, "waiting_time": 7,
                                                       "n_train": 20000, "n_val": 1000, "n_test": 1000},
                            cell="lru", layers=4, hidden=64, encoder=True, d_model=128, norm="layer", ffn="glu",
                            residual=True, pooling="none", optimizer="adamw", lr=1e-3, weight_decay=0.0,
                            rec_lr_factor=0.5, epochs=25, batch_size=50),
                       ("bptt", "online", "truncated", "spatial")),
    "ep-digits": Recipe("EP vs BPTT on static digits (a prototypical network, 64 hidden units, dt = 1; BPTT truncated "
                        "to the last K steps, the paper's baseline)",
                        dict(task="digits", net="prototypical", hidden=64, optimizer="sgd", lr=0.2, weight_decay=0.0,
                             clip_norm=None, schedule="constant", epochs=30, batch_size=32,
                             algorithm_options={"T": 30, "K": 10, "beta": 0.5}), ("ep", "bptt")),
}


#: The default job's learning demo: sequential digits, one pixel per step, several algorithms per cell from identical
#: initial weights, about a minute on 2 cores. The LRU (|λ| ≥ 0.9, so that FPTT's inversion is well conditioned) runs
#: BPTT, its exact online twin `online` (diagonal RTRL traces, step by step), FPTT and the readout-only floor;
#: whole-stack `rtrl` (one backward pass per state unit per step) and the dense-cell sensitivity rules are too slow in
#: NumPy for a one-minute demo, and are shown by `gradcheck`.
_DEMO = dict(task="digits-seq", task_options={"mode": "pixel"}, pooling="last", log_every=5)
DEMO: dict[str, Recipe] = {
    "lru": Recipe("sequential digits, lru", dict(cell="lru", hidden=32, encoder=True, d_model=32, lr=5e-3, epochs=5,
                                                 cell_options={"r_min": 0.9}, **_DEMO),
                  ("bptt", "online", "fptt", "readout")),
    "gru": Recipe("sequential digits, gru", dict(cell="gru", hidden=32, lr=1e-2, epochs=10, **_DEMO),
                  ("bptt", "readout")),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UnknownNameError("recipe", name, RECIPES)
    return RECIPES[name]


def apply_recipe(name: str, config: TrainConfig, explicit=()) -> tuple[TrainConfig, Recipe]:
    """(config with recipe `name`'s settings except the fields named in `explicit`, the recipe). Unless the backend
    is given, a recipe runs on the fastest backend available here (registry.fastest_backend)."""
    r = get_recipe(name)
    given = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in explicit}
    fastest = {} if "backend" in explicit else {"backend": fastest_backend()}
    return dataclasses.replace(config, **{**r.config, **fastest, **given}), r
