"""Command line: ``python -m refimpl.run [COMMAND] …`` (``--help`` on every command).

    (no command)  the default job: gradcheck of every cell with BPTT against finite differences, one table
    gradcheck     compare an algorithm's gradients with BPTT, and BPTT with central finite differences
    backends      list the backends, whether each runs on this machine, and which kernels each implements

User errors (unknown names, bad sizes, unsupported combinations) print one line on stderr and exit with status 2;
a failed check exits with status 1.
"""

from __future__ import annotations

import json
import sys

import click

from .algorithms import ALGORITHMS
from .cells import CELLS
from .errors import RefimplError
from .model import FFNS, NORMS, POOLINGS

#: What the default job checks: every cell (both rnn nonlinearities), alone and inside a full 2-layer block stack.
DEFAULT_CELLS = [("rnn", {"nonlinearity": "tanh"}), ("rnn", {"nonlinearity": "linear"}), ("gru", {}), ("lstm", {}),
                 ("lru", {})]
DEFAULT_MODELS = [dict(layers=1),
                  dict(layers=2, encoder=True, norm="layer", ffn="glu", residual=True),
                  dict(layers=2, ffn="mlp", pooling="cumulative_mean")]


def _parse_cell_options(pairs) -> dict:
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE (e.g. -o nonlinearity=linear)",
                                     param_hint="--cell-option")
        key, value = pair.split("=", 1)
        try:
            options[key] = float(value)
        except ValueError:
            options[key] = value
    return options


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx):
    """refimpl: a readable NumPy reference for how recurrent networks learn.

    Without a command, runs the default job: a gradient check of every cell (BPTT vs central finite differences).
    """
    if ctx.invoked_subcommand is None:
        from .gradcheck import format_summary, gradcheck
        click.echo("Default job: hand-derived BPTT vs central finite differences, every cell in three model stacks\n"
                   "(hidden 4, T=5, B=2, mse loss, float64; every parameter array and x is compared)\n")
        reports = [gradcheck(cell, "bptt", **cell_opts, **model_opts)
                   for cell, cell_opts in DEFAULT_CELLS for model_opts in DEFAULT_MODELS]
        click.echo(format_summary(reports))
        click.echo("\nPer-parameter detail: python -m refimpl.run gradcheck --cell CELL [options]  (see --help)")
        ctx.exit(0 if all(r.ok for r in reports) else 1)


@cli.command()
@click.option("--cell", required=True, type=click.Choice(sorted(CELLS)), help="Which cell.")
@click.option("--algorithm", default="bptt", show_default=True, type=click.Choice(list(ALGORITHMS)),
              help="Algorithm to check against BPTT (DESIGN.md §5 names).")
@click.option("--layers", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--hidden", default=4, show_default=True, type=click.IntRange(min=1), help="Hidden units (lru: N).")
@click.option("--seq-len", default=5, show_default=True, type=click.IntRange(min=1), help="T.")
@click.option("--batch", default=2, show_default=True, type=click.IntRange(min=1), help="B.")
@click.option("--n-in", default=3, show_default=True, type=click.IntRange(min=1), help="Input width.")
@click.option("--dtype", default="float64", show_default=True, type=click.Choice(["float64", "float32"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--backend", default="numpy", show_default=True, help="Backend of the algorithm's kernels.")
@click.option("--norm", type=click.Choice([n for n in NORMS if n]), default=None, help="Pre-norm in each layer.")
@click.option("--ffn", type=click.Choice([f for f in FFNS if f]), default=None, help="Feed-forward block per layer.")
@click.option("--residual/--no-residual", default=False, show_default=True)
@click.option("--encoder/--no-encoder", default=False, show_default=True, help="Linear input encoder.")
@click.option("--pooling", type=click.Choice(list(POOLINGS)), default="none", show_default=True)
@click.option("-o", "--cell-option", "cell_options", multiple=True, metavar="KEY=VALUE",
              help="Cell option, e.g. -o nonlinearity=linear (rnn) or -o r_min=0.9 (lru).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def gradcheck(cell, algorithm, layers, hidden, seq_len, batch, n_in, dtype, seed, backend, norm, ffn, residual,
              encoder, pooling, cell_options, as_json):
    """Compare ALGORITHM's gradients with BPTT, and BPTT with central finite differences.

    Prints one row per parameter (relative error and cosine vs BPTT; BPTT vs FD) and exits with status 1 when BPTT
    misses the FD tolerance or an exact algorithm misses its tolerance (DESIGN.md §7).
    """
    from .gradcheck import format_reports, gradcheck as run_gradcheck
    report = run_gradcheck(cell, algorithm, layers=layers, hidden=hidden, seq_len=seq_len, batch=batch, n_in=n_in,
                           dtype=dtype, seed=seed, backend=backend, norm=norm, ffn=ffn, residual=residual,
                           encoder=encoder, pooling=pooling, **_parse_cell_options(cell_options))
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_reports([report]))
    sys.exit(0 if report.ok else 1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the coverage as JSON.")
def backends(as_json):
    """List backends, whether each runs on this machine (and why not), and the kernels each implements."""
    from .registry import KERNELS, coverage
    rows = coverage()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        status = "available" if r["available"] else f"unavailable: {r['reason']}"
        click.echo(f"{r['backend']:<6} {r['description']:<40} {status}")
        click.echo(f"       kernels: {len(r['kernels'])}/{len(KERNELS)}"
                   + (f" — missing: {', '.join(r['missing'])}" if r["missing"] and r["kernels"] else ""))


def main(argv=None) -> None:
    """Entry point: user errors become one line on stderr and exit status 2 (no traceback)."""
    try:
        rv = cli.main(args=argv, prog_name="python -m refimpl.run", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:       # usage errors: bad option values, missing options, unknown commands
        click.echo(f"error: {' '.join(e.format_message().split())} (see --help)", err=True)
        sys.exit(2)
    except RefimplError as e:
        click.echo(f"error: {' '.join(str(e).split())}", err=True)
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
