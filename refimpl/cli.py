"""Command line: ``python -m refimpl.run [COMMAND] …`` (``--help`` on every command).

Each command is wiring: it turns its options into a call of refimpl/training/ or refimpl/studies/ and prints the
result.

    (no command)  the default job: BPTT of every cell against finite differences (one table), then the learning demo
                  (refimpl/training/recipes.py DEMO)
    gradcheck     compare an algorithm's gradients with BPTT, and BPTT with central finite differences
    train         train a model on a task into a run directory (config.json, metrics.jsonl, checkpoints; --resume)
    compare       train the same model from the same initial weights with several algorithms; table and plot
    plot          learning curves of existing run directories
    fptt-stability  FPTT's gradient quality per cell vs conditioning and sequence length, both warm-ups
    ep-curves     the GDU property: per-step EP updates vs BPTT gradients, with the RMSE metric (JSON, PNG)
    ep-recipe     EP/BPTT sign agreement over mini-batches, for tuning T, K and β
    backends      list the backends, whether each runs on this machine, and which kernels each implements
    bpfree        train a feed-forward network by bp, dfa, drtp, ll-ce or ll-mse (trackers, plot; --resume)
    sweep         any train / bpfree field × seeds in two stages (scan, then seeds) on Dask; resumable

User errors (unknown names, bad sizes, unsupported combinations) print one line on stderr and exit with status 2;
a failed check exits with status 1.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import sys
import warnings
from pathlib import Path

import click
import numpy as np
from click.core import ParameterSource

from tasks import PRESETS

from .algorithms import ALGORITHMS
from .cells import CELLS
from .errors import NumericalError, RefimplError, UnknownNameError
from .nn.model import FFNS, NORMS, POOLINGS
from .plotting import plot_runs
from .registry import KERNELS, coverage, fastest_backend
from .runs import atomic_write_json
from . import reproduce
from .studies import ep_gdu, fptt_stability
from .studies.gradcheck import check_every_cell, format_reports, format_summary, gradcheck as check_gradients
from .training import feedforward, sweep, tracking
from .training.compare import compare as compare_algorithms, format_comparison
from .training.config import EP_SETTINGS, FREEZE_RECURRENCE, TrainConfig
from .training.problems import check_net_options
from .training.loop import train as train_run
from .training.recipes import DEMO, apply_recipe


class _Float(click.FloatRange):
    """A finite float in a range (nan and ±inf refused; the range shows in --help)."""

    def convert(self, value, param, ctx):
        if not isinstance(value, float) or not math.isfinite(value):
            rv = click.FLOAT.convert(value, param, ctx)
            if not math.isfinite(rv):
                self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(value, param, ctx)


class _Sizes(click.ParamType):
    """Layer sizes, input first, as comma-separated integers ≥ 1 (at least an input and an output)."""
    name = "N,N,…"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            sizes = tuple(int(v) for v in str(value).split(","))
        except ValueError:
            sizes = ()
        if len(sizes) < 2 or min(sizes) < 1:
            self.fail(f"{value!r} is not a list of layer sizes: give two or more integers ≥ 1 separated by commas, "
                      f"input first, e.g. 64,64,10", param, ctx)
        return sizes


POSITIVE, COUNT = click.IntRange(min=1), click.IntRange(min=0)
RATE = _Float(min=0, min_open=True)            # a learning rate: > 0
#: EP's nudge strength β: below float64's machine epsilon the nudged phase cannot move a state of order 1, and the
#: estimate (s^β − s^0)/β divides rounding by a vanishing β (β = 5e-324 overflows 1/β).
NUDGE = _Float(min=float(np.finfo(np.float64).eps))
NONNEGATIVE = _Float(min=0)                    # a decay, a clip norm, a factor: ≥ 0 (0 = off)


def _parse_options(pairs, flag: str = "--cell-option", example: str = "-o nonlinearity=linear") -> dict:
    """KEY=VALUE pairs → {key: int | float | str}."""
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE (e.g. {example})", param_hint=flag)
        key, value = pair.split("=", 1)
        for cast in (int, float):
            try:
                options[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            options[key] = value
    return options


#: OSError numbers that mean the run failed in a full or failing file system (exit 1); any other error of a file the
#: user named (read-only, permission, not a directory, …) is a bad location (exit 2).
_FAILED_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG}


def _os_error_line(e: OSError) -> str:
    """One line for an OSError of a file: the path, the system's reason, and the fix."""
    path = e.filename if e.filename2 is None else f"{e.filename} → {e.filename2}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free some space, or choose another --out on a file system with room"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "choose another --out where you can write"
    else:
        fix = "check the path, or choose another --out"
    return f"error: cannot use {path}: {e.strerror or e}; {fix}"


class _OneLineErrors(click.Group):
    """A Click group whose errors are one line on stderr, no traceback: status 2 for user errors (bad options, unknown
    names, unsupported combinations, damaged run files, an output location that cannot be written), 1 for a failed
    run (a numerical blow-up, a full disk, memory that ran out past the estimates). Any other exception is a bug and
    shows its traceback, and so does every error with --debug. Click's test runner goes through here too."""

    debug = False

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _OneLineErrors.debug = False
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        except (click.ClickException, RefimplError, OSError, MemoryError) as e:
            answer = None if _OneLineErrors.debug else _one_line(e)
            if answer is None:
                raise
            click.echo(" ".join(answer[0].split()), err=True)
            sys.exit(answer[1])
        sys.exit(rv if isinstance(rv, int) else 0)


def _one_line(e: Exception) -> tuple[str, int] | None:
    """(the line, the exit status) for an expected failure; None for what must show its traceback (an OSError that
    names no file comes from no path the user gave: a bug)."""
    if isinstance(e, click.ClickException):      # usage errors: bad option values, missing options, unknown commands
        return f"error: {e.format_message()} (see --help)", 2
    if isinstance(e, RefimplError):
        return f"error: {e}", 1 if isinstance(e, NumericalError) else 2
    if isinstance(e, MemoryError):               # past the estimates (refimpl/checks.py check_memory)
        return (f"error: out of memory ({e or 'MemoryError'}); use smaller sizes (--hidden, --batch-size, --layers, "
                f"--sizes, --arch), or --debug to see where"), 1
    if e.filename is None:
        return None
    return _os_error_line(e), 1 if e.errno in _FAILED_WRITES else 2


def _set_debug(ctx, param, value):
    _OneLineErrors.debug = bool(value)


@click.group(cls=_OneLineErrors, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, is_eager=True, expose_value=False, callback=_set_debug,
              help="Show the Python traceback of any error (default: one line on stderr for user errors).")
@click.pass_context
def cli(ctx):
    """refimpl: a readable NumPy reference for how recurrent networks learn.

    Without a command, runs the default job: a gradient check of every cell (BPTT vs central finite differences).
    """
    if ctx.invoked_subcommand is None:
        _demo()


def _demo() -> None:
    """The default job (`make run`): exactness first, then learning — about a minute on 2 cores."""
    click.echo("refimpl demo — 1/2 exactness: hand-derived BPTT vs central finite differences, every cell in three "
               "model stacks\n(hidden 4, T=5, B=2, mse loss, float64; every parameter array and x is compared)\n")
    reports = check_every_cell()
    click.echo(format_summary(reports))
    click.echo("\nrefimpl demo — 2/2 learning: sequential digits (scikit-learn's 8x8 digits, one pixel per step, "
               "T=64), several algorithms from identical initial weights\n")
    backend = fastest_backend()
    for cell, recipe in DEMO.items():
        config = TrainConfig(**{**recipe.config, "backend": backend})
        click.echo(f"{cell}: {config.layers} layer, hidden {config.hidden}"
                   + (f", encoder {config.d_model}" if config.encoder else "") + f", pooling {config.pooling}, "
                   f"{config.epochs} epochs, {config.optimizer} lr {config.lr}, backend {backend} (the fastest "
                   f"available here)")
        click.echo(format_comparison(compare_algorithms(config, list(recipe.algorithms), f"runs/demo/{cell}"))
                   + "\n")
    ok = all(r.ok for r in reports)
    click.echo("More: python -m refimpl.run --help  (gradcheck, train, compare, plot, backends)")
    sys.exit(0 if ok else 1)


@cli.command("gradcheck")
@click.option("--cell", required=True, type=click.Choice(sorted(CELLS)), help="Which cell.")
@click.option("--algorithm", default="bptt", show_default=True, type=click.Choice(list(ALGORITHMS)),
              help="Algorithm to check against BPTT (DESIGN.md §5 names).")
@click.option("--layers", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--hidden", default=4, show_default=True, type=click.IntRange(min=1), help="Hidden units (lru: N).")
@click.option("--seq-len", default=5, show_default=True, type=click.IntRange(min=1), help="T.")
@click.option("--batch", default=2, show_default=True, type=click.IntRange(min=1), help="B.")
@click.option("--n-in", default=3, show_default=True, type=click.IntRange(min=1), help="Input width.")
@click.option("--dtype", default="float64", show_default=True, type=click.Choice(["float64", "float32"]))
@click.option("--seed", default=0, show_default=True, type=COUNT)
@click.option("--backend", default="numpy", show_default=True, help="Backend of the algorithm's kernels.")
@click.option("--norm", type=click.Choice(list(NORMS)), default=None, help="Pre-norm in each layer.")
@click.option("--ffn", type=click.Choice(list(FFNS)), default=None, help="Feed-forward block per layer.")
@click.option("--residual/--no-residual", default=False, show_default=True)
@click.option("--encoder/--no-encoder", default=False, show_default=True, help="Linear input encoder.")
@click.option("--pooling", type=click.Choice(list(POOLINGS)), default="none", show_default=True)
@click.option("-o", "--cell-option", "cell_options", multiple=True, metavar="KEY=VALUE",
              help="Cell option, e.g. -o nonlinearity=linear (rnn) or -o r_min=0.9 (lru).")
@click.option("-a", "--algorithm-option", "algorithm_options", multiple=True, metavar="KEY=VALUE",
              help="Algorithm option, e.g. -a passes=2, -a carrier=state, -a warmup=shooting (fptt).")
@click.option("--loss", default="mse", show_default=True, type=click.Choice(["mse", "ce", "bce"]),
              help="Loss on random targets (ce: integer labels; drtp needs ce or bce).")
@click.option("--chunk", default=None, type=POSITIVE,
              help="Streaming algorithms (RTRL family, fptt): C steps per kernel call, 1 ≤ C ≤ T.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def gradcheck_cmd(cell, algorithm, layers, hidden, seq_len, batch, n_in, dtype, seed, backend, norm, ffn, residual,
                  encoder, pooling, cell_options, algorithm_options, loss, chunk, as_json):
    """Compare ALGORITHM's gradients with BPTT, and BPTT with central finite differences.

    Prints one row per parameter (relative error and cosine vs BPTT; BPTT vs FD) and exits with status 1 when BPTT
    misses the FD tolerance or an exact algorithm misses its tolerance (DESIGN.md §7).
    """
    report = check_gradients(cell, algorithm, layers=layers, hidden=hidden, seq_len=seq_len, batch=batch, n_in=n_in,
                             dtype=dtype, seed=seed, backend=backend, norm=norm, ffn=ffn, residual=residual,
                             encoder=encoder, pooling=pooling, loss=loss, chunk=chunk,
                             algorithm_options=_parse_options(algorithm_options, "--algorithm-option", "-a passes=2"),
                             **_parse_options(cell_options))
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_reports([report]))
    sys.exit(0 if report.ok else 1)


def _run_options(f):
    """The task / model / optimizer options shared by `train` and `compare` (defaults: training.config.TrainConfig)."""
    d = TrainConfig()
    options = [
        click.option("--task", default=d.task, show_default=True, help="Task name (see tasks/), e.g. digits-seq, copy."),
        click.option("--preset", default=None, help="A task preset (e.g. copy-small); sets --task and its options."),
        click.option("-t", "--task-option", "task_options", multiple=True, metavar="KEY=VALUE",
                     help="Task option, e.g. -t mode=row (digits-seq) or -t seq_len=8 (copy)."),
        click.option("--data-dir", default=None, type=click.Path(file_okay=False),
                     help="Directory of the MNIST IDX files (or set REFIMPL_MNIST_DIR)."),
        click.option("--cell", default=d.cell, show_default=True, type=click.Choice(sorted(CELLS))),
        click.option("-o", "--cell-option", "cell_options", multiple=True, metavar="KEY=VALUE",
                     help="Cell option, e.g. -o r_min=0.9 (lru) or -o nonlinearity=linear (rnn)."),
        click.option("--backend", default=d.backend, show_default=True, help="Where the cell kernels run."),
        click.option("--layers", default=d.layers, show_default=True, type=POSITIVE),
        click.option("--hidden", default=d.hidden, show_default=True, type=POSITIVE, help="Hidden units (lru: N)."),
        click.option("--d-model", default=None, type=POSITIVE, help="Encoder width (with --encoder)."),
        click.option("--encoder/--no-encoder", default=d.encoder, show_default=True),
        click.option("--norm", type=click.Choice(list(NORMS)), default=None),
        click.option("--ffn", type=click.Choice(list(FFNS)), default=None),
        click.option("--residual/--no-residual", default=d.residual, show_default=True),
        click.option("--dropout", default=d.dropout, show_default=True, type=_Float(min=0, max=1, max_open=True),
                     help="Dropout rate in training (after each block's FFN nonlinearity and on its output, one mask "
                          "per sequence; the online-LRU paper uses 0.1); none at evaluation."),
        click.option("--pooling", type=click.Choice(list(POOLINGS)), default=d.pooling, show_default=True),
        click.option("--dtype", default=d.dtype, show_default=True, type=click.Choice(["float64", "float32"])),
        click.option("--seed", default=d.seed, show_default=True, type=COUNT),
        click.option("--epochs", default=d.epochs, show_default=True, type=POSITIVE),
        click.option("--steps", default=None, type=POSITIVE, help="Total optimizer steps (overrides --epochs)."),
        click.option("--batch-size", default=d.batch_size, show_default=True, type=POSITIVE),
        click.option("--optimizer", default=d.optimizer, show_default=True, type=click.Choice(["sgd", "adam", "adamw"])),
        click.option("--lr", default=d.lr, show_default=True, type=RATE),
        click.option("--weight-decay", default=d.weight_decay, show_default=True, type=NONNEGATIVE,
                     help="Not applied to recurrent (cell) parameters."),
        click.option("--rec-lr-factor", default=d.rec_lr_factor, show_default=True, type=NONNEGATIVE,
                     help="Learning-rate factor of the recurrent (cell) parameters."),
        click.option("--freeze", "freeze", default="", metavar="NAMES",
                     help="Cell parameters that do not learn, comma-separated leaf names, e.g. --freeze "
                          "nu_log,theta_log (the LRU's λ)."),
        click.option("--freeze-recurrence", is_flag=True,
                     help="The FPTT code's freeze_recurrence: freeze the LRU's λ (nu_log, theta_log) only; γ, B, C "
                          "and the rest train (--rec-lr-factor 0 freezes every cell parameter)."),
        click.option("--clip", "clip_norm", default=d.clip_norm, show_default=True, type=NONNEGATIVE,
                     help="Clip the global gradient norm (0 = off)."),
        click.option("--schedule", default=d.schedule, show_default=True, type=click.Choice(["cosine", "constant"])),
        click.option("--warmup-steps", default=d.warmup_steps, show_default=True, type=COUNT),
        click.option("--log-every", default=d.log_every, show_default=True, type=POSITIVE),
        click.option("-a", "--algorithm-option", "algorithm_options", multiple=True, metavar="KEY=VALUE",
                     help="Algorithm option, e.g. -a passes=2, -a carrier=state, -a warmup=shooting (fptt); "
                          "-a T=30 -a K=10 -a beta=0.5 (ep on a static task)."),
        click.option("--net", default=d.net, show_default=True,
                     type=click.Choice(["prototypical", "energy", "toy", "conv"]),
                     help="Static tasks: the equilibrium-propagation network (refimpl/ep/networks.py, conv.py)."),
        click.option("-n", "--net-option", "net_options", multiple=True, metavar="KEY=VALUE",
                     help="EP network option, e.g. -n activation=tanh -n dt=0.5; -n channels=32,64 (--net conv)."),
        click.option("--update-every", default=None, type=POSITIVE,
                     help="Truly online training (RTRL family, tbptt): update the weights every K time steps "
                          "(1 ≤ K ≤ T; a stream task needs it)."),
        click.option("--chunk", default=None, type=POSITIVE,
                     help="Streaming algorithms (RTRL family, fptt): C steps per kernel call, 1 ≤ C ≤ T (default: "
                          "1 on numpy, min(256, T) on a backend); the results do not depend on C."),
        click.option("--micro-batch", default=None, type=POSITIVE,
                     help="Split each batch into M micro-batches (1 ≤ M ≤ batch), gradients combined exactly; "
                          "not with --update-every."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _config_from_options(algorithm, kw):
    """The TrainConfig that the shared run options describe (with --preset resolved)."""
    task, task_options = kw.pop("task"), _parse_options(kw.pop("task_options"), "--task-option", "-t mode=row")
    preset = kw.pop("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise UnknownNameError("preset", preset, PRESETS)
        task, preset_options = PRESETS[preset]
        task_options = {**preset_options, **task_options}
    kw["cell_options"] = _parse_options(kw.pop("cell_options"))
    kw["algorithm_options"] = _parse_options(kw.pop("algorithm_options"), "--algorithm-option", "-a passes=2")
    kw["net_options"] = _parse_options(kw.pop("net_options"), "--net-option", "-n activation=tanh")
    kw["clip_norm"] = kw["clip_norm"] or None
    freeze = [n.strip() for n in kw.pop("freeze").split(",") if n.strip()]
    if kw.pop("freeze_recurrence"):
        freeze += [n for n in FREEZE_RECURRENCE if n not in freeze]
    kw["freeze"] = tuple(freeze)
    return TrainConfig(task=task, task_options=task_options, algorithm=algorithm, **kw)


def _given(ctx, config) -> dict:
    """{config field: its option} for the options given on the command line (not left at their default): what
    --resume must honour or refuse, never drop (runs.resume_config). --preset stands for --task and --task-option."""
    fields = set(dataclasses.asdict(config))
    given = {}
    for p in ctx.command.params:
        if ctx.get_parameter_source(p.name) in (None, ParameterSource.DEFAULT):
            continue
        flag = max(p.opts, key=len)
        for name in {"preset": ("task", "task_options")}.get(p.name, (p.name,)):
            if name in fields:
                given[name] = flag
    return given


def _resume_dir(out_dir, resume_dir):
    if out_dir is not None and resume_dir is not None and Path(out_dir) != Path(resume_dir):
        raise click.UsageError(f"--out {out_dir} and --resume {resume_dir} name two run directories; a resumed run "
                               f"continues in its own directory: drop --out")
    return resume_dir


@cli.command("train")
@_run_options
@click.option("--algorithm", default="bptt", show_default=True, type=click.Choice(list(ALGORITHMS)))
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Run directory (default runs/<task>-<cell>-<algorithm>-s<seed>).")
@click.option("--resume", "resume_dir", default=None, type=click.Path(file_okay=False),
              help="Continue the run in this directory from its last checkpoint (its config.json wins; --epochs, "
                   "--steps and --data-dir may change).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--benchmark", is_flag=True, help="Also train with bptt from the same initial weights and compare "
              "(the EP paper's --benchmark; the same as `compare --algorithms ALGORITHM,bptt`).")
@click.option("--log", "log", default=None, help="Also export the metrics for a tracker: tensorboard, wandb "
              "(comma-separated; written into the run directory when the run ends).")
@click.pass_context
def train_cmd(ctx, algorithm, out_dir, resume_dir, progress, benchmark, log, **kw):
    """Train a model on a task into a run directory: config.json, metrics.jsonl (flushed), atomic checkpoints,
    result.json. A killed run continues with --resume RUN_DIR and ends with the same numbers; with --resume, the
    stored configuration wins: --epochs, --steps (to extend the run) and --data-dir may change, any other option given
    with a different value than the stored one is refused."""
    config = _config_from_options(algorithm, kw)
    loggers = tracking.check_loggers(log)
    resume_dir = _resume_dir(out_dir, resume_dir)
    if benchmark:
        if resume_dir:
            raise click.UsageError("--benchmark starts new runs; it cannot be combined with --resume")
        names = [algorithm] + (["bptt"] if algorithm != "bptt" else [])
        out = out_dir or f"runs/benchmark-{config.task}-{algorithm}"
        click.echo(format_comparison(compare_algorithms(config, names, out, progress=progress)))
        return
    run_dir = resume_dir or out_dir or f"runs/{config.task}-{config.cell}-{algorithm}-s{config.seed}"
    result = train_run(config, run_dir, resume=resume_dir is not None, progress=progress,
                       given=_given(ctx, config))
    acc = (f", val accuracy {result.val_accuracy:.4f}, test accuracy {result.test_accuracy:.4f}"
           if result.val_accuracy is not None else "")
    click.echo(f"{run_dir}: {result.steps} steps in {result.time_s:.1f} s; train loss {result.train_loss:.4f}, "
               f"val loss {result.val_loss:.4f}, test loss {result.test_loss:.4f}{acc}")
    for name, where in tracking.export_run(run_dir, loggers).items():
        click.echo(f"{name}: {where}")


@cli.command("compare")
@_run_options
@click.option("--algorithms", default="bptt,readout", show_default=True,
              help="Comma-separated algorithm names, trained from identical initial weights.")
@click.option("--recipe", default=None, help="A published comparison (fptt-digits, fptt-mnist98, copy-lru, "
              "ep-digits); options given explicitly override it.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Directory for the runs, compare.json and compare.png (default runs/compare-<task>-<cell>).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def compare_cmd(ctx, algorithms, recipe, out_dir, progress, **kw):
    """Train the same model from the same initial weights with several algorithms; print final loss, accuracy,
    time and peak memory, and draw the learning curves (compare.png)."""
    names = [a.strip() for a in algorithms.split(",") if a.strip()]
    if not names:
        raise click.BadParameter(f"{algorithms!r} names no algorithm; give comma-separated names, e.g. bptt,readout "
                                 f"(allowed: {', '.join(ALGORITHMS)})", param_hint="--algorithms")
    config = _config_from_options(names[0] if names else "bptt", kw)
    if recipe is not None:
        explicit = {p.name for p in ctx.command.params
                    if ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE}
        config, r = apply_recipe(recipe, config, explicit)
        if "algorithms" not in explicit:
            names = list(r.algorithms)
            click.echo(f"recipe {recipe}: {r.about}")
        if "backend" not in explicit:
            click.echo(f"backend {config.backend} (the fastest available here; --backend to choose)")
    out = out_dir or f"runs/compare-{recipe or config.task + '-' + config.cell}"
    click.echo(format_comparison(compare_algorithms(config, names, out, progress=progress)))


@cli.command("plot")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_path", default="curves.png", show_default=True, type=click.Path(dir_okay=False),
              help="PNG file to write.")
def plot_cmd(run_dirs, out_path):
    """Draw the learning curves (training loss, validation loss and accuracy) of existing run directories."""
    click.echo(str(plot_runs(run_dirs, out_path)))


@cli.command("fptt-stability")
@click.option("--out", "out_dir", default="runs/fptt-stability", show_default=True, type=click.Path(file_okay=False),
              help="Directory for stability.json and stability.png.")
@click.option("--full", is_flag=True, help="The complete grid: T up to 1000 and 3 seeds (a few minutes).")
@click.option("--seeds", default=None, type=click.IntRange(min=1), help="Seeds per point (default 2, full 3).")
@click.option("--width", default=None, type=click.IntRange(min=1),
              help="Input = state = output width of every cell (default 32).")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(list(fptt_stability.PRECISIONS)),
              help="States/carriers precision (default: all three).")
@click.option("--cell", "cells", multiple=True, type=click.Choice(list(fptt_stability.CELLS)),
              help="Cell, each with its knob: lru r_min, rnn rho, gru b_hz, lstm b_hf (default: all four).")
@click.option("--warmup", "warmups", multiple=True, type=click.Choice(list(fptt_stability.WARMUPS)),
              help="FPTT warm-up (default: both).")
def fptt_stability_cmd(out_dir, full, seeds, width, precisions, cells, warmups):
    """FPTT's gradient quality vs conditioning and sequence length (the FPTT paper's experiment, on every cell): one
    layer, Gaussian inputs, MSE to zero targets; FPTT's relative error vs float64 BPTT over each cell's knob × T, for
    both warm-ups and three precisions, and the region where it stays within 1e-6."""
    summary, _, json_path, png = fptt_stability.write_study(out_dir, full=full, seeds=seeds, width=width,
                                                            precisions=precisions, cells=cells, warmups=warmups)
    click.echo(fptt_stability.format_table(summary))
    click.echo(f"wrote {json_path} and {png}")


def _sizes_text(sizes) -> str:
    return ",".join(map(str, sizes))


def _ep_net_options(f):
    """Options shared by ep-curves and ep-recipe (defaults: refimpl.training.config.EP_SETTINGS)."""
    toy, digits = EP_SETTINGS["toy"], EP_SETTINGS["digits"]
    options = [
        click.option("--net", "kind", default="toy", show_default=True,
                     type=click.Choice(["toy", "energy", "prototypical", "conv"])),
        click.option("--sizes", default=None, type=_Sizes(),
                     help=f"Layer sizes of the layered networks, input first, comma-separated (default: toy "
                     f"{_sizes_text(toy['sizes'])}; energy and prototypical "
                     f"{_sizes_text(digits['sizes'])} on the digits, the input 784 on MNIST). The conv network "
                     f"takes -n channels=C2,C1 instead."),
        click.option("--data-dir", default=None, type=click.Path(exists=True, file_okay=False),
                     help="Directory of the MNIST IDX files: feed MNIST (784 inputs) instead of the 8×8 digits "
                     "(not for the toy network)."),
        click.option("--T", "T", default=None, type=POSITIVE,
                     help=f"Free-phase steps (default toy {toy['T']}, others {digits['T']})."),
        click.option("--K", "K", default=None, type=POSITIVE,
                     help=f"Nudged steps (default toy {toy['K']}, others {digits['K']})."),
        click.option("--beta", default=None, type=NUDGE,
                     help=f"Nudge strength (default toy {toy['beta']}, others {digits['beta']})."),
        click.option("--batch", default=20, show_default=True, type=click.IntRange(min=1)),
        click.option("--seed", default=0, show_default=True, type=COUNT),
        click.option("-n", "--net-option", "net_options", multiple=True, metavar="KEY=VALUE",
                     help="Network option, e.g. -n activation=tanh -n dt=0.08 -n clamp=0; conv: -n channels=32,64 "
                     "-n kernel=5 -n pool=2 -n activation=hardsigm."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _ep_settings(kind, sizes, T, K, beta, net_options, data_dir=None):
    """(sizes, T, K, beta, network options) from the options, EP_SETTINGS filling what was not given (the network's
    own defaults — activation, dt, clamp; the conv net's channels — are refimpl.ep's). On MNIST (data_dir) the
    default sizes take 784 inputs; the conv network has no sizes (None)."""
    if kind == "toy" and data_dir is not None:
        raise click.BadParameter("the toy network is fed the paper's toy data (5 random inputs); drop --data-dir, or "
                                 "use --net energy, prototypical or conv for MNIST", param_hint="--data-dir")
    d = EP_SETTINGS["toy" if kind == "toy" else "digits"]
    opts = check_net_options(kind, _parse_options(net_options, "--net-option", "-n activation=tanh"))
    default_sizes = None if kind == "conv" else d["sizes"] if data_dir is None else (784,) + tuple(d["sizes"][1:])
    given = {"T": T, "K": K, "beta": beta}                     # None: not given (0 is refused by the types)
    return (sizes if sizes is not None else default_sizes, *(d[k] if v is None else v for k, v in given.items()),
            opts)


@cli.command("ep-curves")
@_ep_net_options
@click.option("--out", "out_dir", default="runs/ep-curves", show_default=True, type=click.Path(file_okay=False))
def ep_curves_cmd(kind, sizes, data_dir, T, K, beta, batch, seed, net_options, out_dir):
    """The GDU property made visible: per-step EP neuron updates vs BPTT neuron gradients and cumulative EP weight
    updates vs cumulative BPTT gradients, with the RMSE metric (curves.json, curves.png). Networks: toy, energy,
    prototypical (--sizes) and conv (-n channels=…), on the digits or on MNIST (--data-dir)."""
    sizes, T, K, beta, opts = _ep_settings(kind, sizes, T, K, beta, net_options, data_dir)
    report = ep_gdu.ep_curves(kind, sizes, T=T, K=K, beta=beta, batch=batch, seed=seed, data_dir=data_dir, **opts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "curves.json", report)
    png = ep_gdu.plot_curves(report, out / "curves.png")
    for n in report["neurons"]:
        click.echo(f"layer {n['layer']} neurons: RMSE {n['rmse'][0]:.3g} ± {n['rmse'][1]:.2g}")
    for w in report["weights"]:
        click.echo(f"{w['param']:<6} cumulative: RMSE {w['rmse'][0]:.3g} ± {w['rmse'][1]:.2g}")
    click.echo(f"wrote {out / 'curves.json'} and {png}")


@cli.command("ep-recipe")
@_ep_net_options
@click.option("--batches", default=20, show_default=True, type=click.IntRange(min=1))
def ep_recipe_cmd(kind, sizes, data_dir, T, K, beta, batch, seed, net_options, batches):
    """The sign-agreement "recipe" for tuning T, K and β: per weight matrix, the % of entries where the EP update and
    the truncated BPTT gradient agree in sign, mean ± std over random mini-batches."""
    sizes, T, K, beta, opts = _ep_settings(kind, sizes, T, K, beta, net_options, data_dir)
    click.echo(ep_gdu.format_recipe(ep_gdu.ep_recipe(kind, sizes, T=T, K=K, beta=beta, batches=batches, batch=batch,
                                                     seed=seed, data_dir=data_dir, **opts)))


# ----------------------------------------------------------------------------------------------------------------
# Backprop-free learning in feed-forward networks (refimpl/bpfree/): train one run, or sweep a grid

def _bpfree_options(f):
    """Options shared by `bpfree` and `sweep` (defaults: refimpl.training.feedforward.BpfreeConfig)."""
    d = feedforward.BpfreeConfig()
    options = [
        click.option("--task", default=d.task, show_default=True, help="A static task: digits or mnist-static."),
        click.option("-t", "--task-option", "task_options", multiple=True, metavar="KEY=VALUE",
                     help="Task option, e.g. -t n_train=5000 (mnist-static)."),
        click.option("--data-dir", default=None, type=click.Path(file_okay=False),
                     help="Directory of the MNIST IDX files (or set REFIMPL_MNIST_DIR)."),
        click.option("--problem", default=d.problem, show_default=True,
                     help="classification (labels, softmax) or reconstruction (the input, sigmoid outputs)."),
        click.option("--batch-norm/--no-batch-norm", default=d.batch_norm, show_default=True,
                     help="Batch norm between each dense layer and its activation."),
        click.option("--dropout", default=d.dropout, show_default=True,
                     type=_Float(min=0, max=1, max_open=True),
                     help="Drop probability."),
        click.option("--dtype", default=d.dtype, show_default=True, type=click.Choice(["float64", "float32"])),
        click.option("--seed", default=d.seed, show_default=True, type=COUNT),
        click.option("--epochs", default=d.epochs, show_default=True, type=POSITIVE),
        click.option("--batch-size", default=d.batch_size, show_default=True, type=POSITIVE),
        click.option("--optimizer", default=d.optimizer, show_default=True,
                     type=click.Choice(["sgd", "adam", "adamw"])),
        click.option("--weight-decay", default=d.weight_decay, show_default=True, type=NONNEGATIVE),
        click.option("--clip", "clip_norm", default=0.0, show_default=True, type=NONNEGATIVE,
                     help="Clip the global update norm (0 = off)."),
        click.option("--schedule", default=d.schedule, show_default=True, type=click.Choice(["constant", "cosine"])),
        click.option("--log-every", default=d.log_every, show_default=True, type=POSITIVE),
        click.option("--trackers/--no-trackers", default=d.trackers, show_default=True,
                     help="Log bp-cosine, weight-alignment and gradient norms per layer after every epoch."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _bpfree_base(kw):
    kw["task_options"] = _parse_options(kw.pop("task_options"), "--task-option", "-t n_train=5000")
    kw["clip_norm"] = kw["clip_norm"] or None
    return feedforward.BpfreeConfig(**kw)


def _echo_warnings(caught) -> None:
    for w in caught:
        click.echo(f"warning: {' '.join(str(w.message).split())}", err=True)


@cli.command("bpfree")
@_bpfree_options
@click.option("--algorithm", default="bp", show_default=True, help="bp | dfa | drtp | ll-ce | ll-mse.")
@click.option("--arch", default="128-128", show_default=True, help="Hidden widths, e.g. 256-256-256.")
@click.option("--activation", default="tanh", show_default=True, help="tanh | relu | leaky-relu | swish.")
@click.option("--init", default="orthogonal", show_default=True, help="Forward weights: orthogonal | lecun.")
@click.option("--feedback-init", default="orthogonal", show_default=True,
              help="The fixed feedback / projection matrices: orthogonal | lecun.")
@click.option("--lr", default=1e-3, show_default=True, type=RATE)
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Run directory (default runs/bpfree-<task>-<algorithm>-s<seed>).")
@click.option("--resume", "resume_dir", default=None, type=click.Path(file_okay=False),
              help="Continue the run in this directory from its last checkpoint (its config.json wins; --epochs and "
                   "--data-dir may change).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--log", "log", default=None, help="Also export the metrics for a tracker: tensorboard, wandb "
              "(comma-separated; written into the run directory when the run ends).")
@click.pass_context
def bpfree_cmd(ctx, out_dir, resume_dir, progress, log, **kw):
    """Train a feed-forward network by backprop (bp) or a backprop-free rule (dfa, drtp, ll-ce, ll-mse) on a static
    task: run directory with config.json, metrics.jsonl (losses, errors and per-layer trackers), atomic checkpoints,
    result.json and trackers.png. A killed run continues with --resume RUN_DIR (--epochs and --data-dir may change;
    any other option given with another value than the stored one is refused)."""
    config = _bpfree_base(kw)
    loggers = tracking.check_loggers(log)
    resume_dir = _resume_dir(out_dir, resume_dir)
    run_dir = resume_dir or out_dir or f"runs/bpfree-{config.task}-{config.algorithm}-s{config.seed}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = feedforward.train(config, run_dir, resume=resume_dir is not None, progress=progress,
                                   given=_given(ctx, config))
    _echo_warnings(caught)
    err = (f", val error {result.val_error:.2f}%, test error {result.test_error:.2f}%"
           if result.val_error is not None else "")
    click.echo(f"{run_dir}: {result.steps} steps in {result.time_s:.1f} s; train loss {result.train_loss:.4f}, "
               f"val loss {result.val_loss:.4f}, test loss {result.test_loss:.4f}{err}; trackers: "
               f"{run_dir}/trackers.png")
    for name, where in tracking.export_run(run_dir, loggers).items():
        click.echo(f"{name}: {where}")


_BPFREE_ONLY = ("problem", "batch_norm", "dropout", "trackers", "activations", "inits", "forward_inits", "archs")
_TRAIN_ONLY = ("cell", "hidden", "layers", "backend", "steps", "cell_options", "algorithm_options", "net_options")


def _value(text: str):
    """A command-line value: int, float, true/false, none, or the string."""
    low = text.strip().lower()
    if low in ("true", "false", "on", "off"):
        return low in ("true", "on")
    if low in ("none", "null"):
        return None
    return _parse_options([f"v={text.strip()}"])["v"]


def _assignments(pairs, flag: str, example: str, many: bool) -> dict:
    """FIELD=VALUE (or FIELD=V1,V2,… when many) pairs → {field: value or [values]}."""
    out = {}
    for pair in pairs:
        if "=" not in pair or not pair.split("=", 1)[0].strip():
            raise click.BadParameter(f"{pair!r} is not FIELD=VALUE{',…' if many else ''} (e.g. {example})",
                                     param_hint=flag)
        key, text = (s.strip() for s in pair.split("=", 1))
        out[key] = [_value(v) for v in text.split(",") if v.strip()] if many else _value(text)
    return out


def _sweep_kind(kind, kw, algorithms, fields_named) -> str:
    """The kind a sweep trains when --kind is not given: train when anything says recurrent (a sequence task, an
    algorithm that is not a feed-forward rule, a model option), bpfree otherwise."""
    if kind:
        return kind
    from .bpfree import RULES
    from .training.config import TrainConfig as T
    from .training.feedforward import BpfreeConfig as B
    if any(kw.get(k) not in (None, ()) for k in _TRAIN_ONLY):
        return "train"
    from tasks import task_kind
    if kw.get("task") and task_kind(kw["task"]) != "static":
        return "train"
    if algorithms and any(a in ALGORITHMS and a not in RULES for a in algorithms):
        return "train"
    if any(f in T.__dataclass_fields__ and f not in B.__dataclass_fields__ for f in fields_named):
        return "train"
    return "bpfree"


@cli.command("sweep")
@click.option("--kind", type=click.Choice(["train", "bpfree"]), default=None,
              help="What a trial trains: `train` (any task × cell × algorithm, EP networks) or `bpfree` (the "
                   "feed-forward rules). Default: train when a sequence task, a recurrent algorithm or a model "
                   "option is given, else bpfree.")
@click.option("--task", default=None, help="Task or preset (default: digits for bpfree, digits-seq for train).")
@click.option("-t", "--task-option", "task_options", multiple=True, metavar="KEY=VALUE",
              help="Task option, e.g. -t seq_len=8 (copy), -t n_train=5000 (mnist-static).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="MNIST IDX files.")
@click.option("--cell", default=None, type=click.Choice(sorted(CELLS)), help="train: the cell.")
@click.option("-o", "--cell-option", "cell_options", multiple=True, metavar="KEY=VALUE",
              help="train: cell option, e.g. -o r_min=0.9 (lru).")
@click.option("-a", "--algorithm-option", "algorithm_options", multiple=True, metavar="KEY=VALUE",
              help="train: algorithm option, e.g. -a K=10 (ep).")
@click.option("-n", "--net-option", "net_options", multiple=True, metavar="KEY=VALUE",
              help="train: EP network option, e.g. -n dt=0.5.")
@click.option("--backend", default=None, help="train: where the cell kernels run.")
@click.option("--layers", default=None, type=POSITIVE, help="train: layers.")
@click.option("--hidden", default=None, type=POSITIVE, help="train: hidden units (lru: N).")
@click.option("--steps", default=None, type=POSITIVE, help="train: total optimizer steps (overrides --epochs).")
@click.option("--problem", default=None, help="bpfree: classification or reconstruction.")
@click.option("--batch-norm/--no-batch-norm", default=None, help="bpfree: batch norm.")
@click.option("--dropout", default=None, type=_Float(min=0, max=1, max_open=True), help="bpfree: drop probability.")
@click.option("--trackers/--no-trackers", default=None, help="bpfree: per-layer trackers after every epoch.")
@click.option("--dtype", default=None, type=click.Choice(["float64", "float32"]))
@click.option("--seed", default=None, type=COUNT, help="The first seed (the seeds are seed, seed + 1, …).")
@click.option("--epochs", default=None, type=POSITIVE)
@click.option("--batch-size", default=None, type=POSITIVE)
@click.option("--optimizer", default=None, type=click.Choice(["sgd", "adam", "adamw"]))
@click.option("--weight-decay", default=None, type=NONNEGATIVE)
@click.option("--clip", "clip_norm", default=None, type=NONNEGATIVE, help="Clip the global norm (0 = off).")
@click.option("--schedule", default=None, type=click.Choice(["constant", "cosine"]))
@click.option("--log-every", default=None, type=POSITIVE)
@click.option("-s", "--set", "settings", multiple=True, metavar="FIELD=VALUE",
              help="Any other field of the base config, e.g. -s update_every=4 -s rec_lr_factor=0.5.")
@click.option("--algorithms", default=None,
              help="Comma-separated algorithms (bpfree default: bp,dfa,drtp,ll-ce,ll-mse; train: e.g. "
                   "bptt,online,truncated,spatial).")
@click.option("--activations", default=None, help="bpfree: comma-separated activations.")
@click.option("--inits", default=None, help="bpfree: comma-separated init schemes of the feedback matrices.")
@click.option("--forward-inits", default=None, help="bpfree: comma-separated init schemes of the forward weights.")
@click.option("--archs", default=None, help="bpfree: comma-separated architectures, e.g. 128,256-256.")
@click.option("--lr-min", default=1e-4, show_default=True, type=RATE)
@click.option("--lr-max", default=1e-2, show_default=True, type=RATE)
@click.option("--lr-points", default=3, show_default=True, type=POSITIVE, help="Learning rates on a log grid.")
@click.option("--lrs", default=None, help="Comma-separated learning rates (instead of the log grid).")
@click.option("-g", "--grid", "grid_options", multiple=True, metavar="FIELD=V1,V2,…",
              help="Any field as a grid dimension, e.g. -g r_min=0.5,0.9 -g hidden=16,32 -g K=5,10 "
                   "-g examples_frac=0.1,1 (dotted for options: -g task_options.seq_len=4,8).")
@click.option("--seeds", default=None, type=POSITIVE,
              help="Stage 2: rerun the best configuration per group with this many seeds (default: --executions).")
@click.option("--executions", default=1, show_default=True, type=POSITIVE,
              help="Stage 1: seeds per grid point; a point's score is their mean.")
@click.option("--objective", default=None, type=click.Choice(["val_error", "val_loss", "loss"]),
              help="What chooses the best point (default: val_error where there is an accuracy, else val_loss).")
@click.option("--group-by", default="algorithm", show_default=True,
              help="Comma-separated fields: one best configuration per group.")
@click.option("--scheduler", default=None,
              help="tcp://HOST:PORT of an existing Dask scheduler (docs/sweeps.md); default: an embedded local "
                   "cluster; 'inline': this process, no Dask.")
@click.option("--workers", default=None, type=int, help="Local cluster size (default: the cores).")
@click.option("--log", "log", default=None,
              help="Also export each trial's metrics: tensorboard, wandb (comma-separated).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Sweep directory (default runs/sweep-<task>-…). Rerun the same command to resume.")
def sweep_cmd(kind, settings, algorithms, activations, inits, forward_inits, archs, lr_min, lr_max, lr_points, lrs,
              grid_options, seeds, executions, objective, group_by, scheduler, workers, log, out_dir, **kw):
    """Sweep any train / bpfree configuration field × seeds, on Dask: stage 1 scans the grid on validation (each
    point run --executions times), stage 2 reruns the best configuration per group (--group-by) with --seeds seeds;
    the table gives validation and test mean ± std (summary.json, summary.png). Trials run on an embedded local Dask
    cluster, or on an existing one (--scheduler). Rerunning the same command resumes it: finished trials are
    skipped, unfinished ones continue from their checkpoints."""
    def split(s):
        return [v.strip() for v in s.split(",") if v.strip()]
    extra = _assignments(settings, "--set", "-s update_every=4", many=False)
    grid_extra = _assignments(grid_options, "--grid", "-g hidden=16,32", many=True)
    algorithm_list = split(algorithms) if algorithms else None
    kind = _sweep_kind(kind, {**kw, "activations": activations, "inits": inits, "forward_inits": forward_inits,
                              "archs": archs}, algorithm_list, [*extra, *grid_extra])
    for name, given in {**kw, "activations": activations, "inits": inits, "forward_inits": forward_inits,
                        "archs": archs}.items():
        wrong = _BPFREE_ONLY if kind == "train" else _TRAIN_ONLY
        if name in wrong and given not in (None, ()):
            other = "bpfree" if kind == "train" else "train"
            raise click.UsageError(f"--{name.replace('_', '-')} does not apply to a {kind} sweep (it is an option "
                                   f"of {other} sweeps); drop it or give --kind")
    base_kw = {k: v for k, v in kw.items() if v not in (None, ())}
    for name, flag, example in (("task_options", "--task-option", "-t seq_len=8"),
                                ("cell_options", "--cell-option", "-o r_min=0.9"),
                                ("algorithm_options", "--algorithm-option", "-a K=10"),
                                ("net_options", "--net-option", "-n dt=0.5")):
        if name in base_kw:
            base_kw[name] = _parse_options(base_kw[name], flag, example)
    if base_kw.get("clip_norm") == 0:
        base_kw["clip_norm"] = None
    cls = feedforward.BpfreeConfig if kind == "bpfree" else TrainConfig
    try:
        base = sweep.with_values(cls(**base_kw), {sweep.resolve_field(kind, k): v for k, v in extra.items()})
    except TypeError as e:
        raise click.UsageError(f"a --set value does not fit its field ({e})") from None
    try:
        lr_values = [float(v) for v in split(lrs)] if lrs else sweep.lr_grid(lr_min, lr_max, lr_points)
    except ValueError:
        raise click.BadParameter(f"{lrs!r} is not a comma-separated list of numbers", param_hint="--lrs") from None
    if kind == "bpfree" and algorithm_list is None:
        algorithm_list = split("bp,dfa,drtp,ll-ce,ll-mse")
    grid = {"algorithm": algorithm_list} if algorithm_list else {}
    for field, text in (("activation", activations), ("init", forward_inits), ("feedback_init", inits),
                        ("arch", archs)):
        if text is not None:
            grid[field] = split(text)
    grid["lr"] = lr_values
    grid.update(grid_extra)
    default_out = (f"runs/sweep-{base.task}-{base.problem}" if kind == "bpfree" else
                   f"runs/sweep-{base.task}-{base.cell}")
    summary = sweep.run_sweep(base, grid, out_dir or default_out, scheduler=scheduler, workers=workers,
                              seeds=seeds, executions=executions, group_by=tuple(split(group_by)),
                              objective=objective, log=log or (),
                              echo=lambda s: click.echo(s, err=True))
    click.echo(summary.table)


@cli.command("reproduce")
@click.argument("name", required=False)
@click.option("--list", "list_them", is_flag=True, help="List the experiments and what each reproduces.")
@click.option("--budget", default="quick", show_default=True, type=click.Choice(list(reproduce.BUDGETS)),
              help="quick: ≤ 10 min on 2 cores, small sizes, 1–2 seeds; full: the published protocol at the sizes "
                   "that fit one machine (the page states the hours).")
@click.option("--backend", default=None, help="Backend of the trials (default: the fastest available here).")
@click.option("--scheduler", default=None,
              help="tcp://HOST:PORT of an existing Dask scheduler, or inline; default: an embedded local cluster.")
@click.option("--workers", default=None, type=POSITIVE, help="Local cluster size (default: the cores).")
@click.option("--data-dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="MNIST IDX files: the experiments that can use MNIST do (else they use the bundled digits).")
@click.option("--out", "out_dir", default="runs/reproduce", show_default=True, type=click.Path(file_okay=False),
              help="Where the sweeps' run directories go. Rerun the same command to resume.")
@click.option("--results", "results_dir", default="docs/results", show_default=True,
              type=click.Path(file_okay=False), help="Where the result page NAME.md and its figures are written.")
def reproduce_cmd(name, list_them, budget, backend, scheduler, workers, data_dir, out_dir, results_dir):
    """Reproduce a published table or figure: the paper's protocol (lr chosen on validation, several seeds,
    identical initial weights across algorithms) through the sweep machinery, resumable; writes RESULTS/NAME.md
    with our numbers beside the published ones, and its figures."""
    if list_them or name is None:
        for key in reproduce.MODULES:
            e = reproduce.get_experiment(key)
            click.echo(f"{key:<16} {e.title}")
        if name is None and not list_them:
            raise click.UsageError("name an experiment (the list above), e.g. `reproduce fptt-digits --budget quick`")
        return
    settings = reproduce.Settings(budget=budget, backend=backend, data_dir=data_dir)
    page = reproduce.reproduce(name, settings, out_dir=out_dir, results_dir=results_dir, scheduler=scheduler,
                               workers=workers, echo=lambda s: click.echo(s, err=True))
    click.echo(page)


@cli.command("backends")
@click.option("--json", "as_json", is_flag=True, help="Print the coverage as JSON.")
def backends_cmd(as_json):
    """List backends, whether each runs on this machine (and why not), and the kernels each implements."""
    rows = coverage()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        status = "available" if r["available"] else f"unavailable: {r['reason']}"
        click.echo(f"{r['backend']:<6} {r['description']:<40} {status}")
        click.echo(f"       kernels: {len(r['kernels'])}/{len(KERNELS)}"
                   + (f" — missing: {', '.join(r['missing'])}" if r["missing"] and r["kernels"] else ""))
        for why, cases in r["unsupported"].items():
            click.echo(f"       not run here: {', '.join(cases)} — {why}")


def main(argv=None) -> None:
    """Entry point (also `refimpl` when installed)."""
    cli.main(args=argv, prog_name="python -m refimpl.run")


if __name__ == "__main__":
    main()
