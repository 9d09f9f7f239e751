"""Training: runs you can trust, built on the run-directory files of refimpl/runs.py.

    config.py       TrainConfig (a run's config.json), RunResult, the EP settings table
    problems.py     task × network → a gradient on a batch and an evaluation of a split (sequence models, EP networks)
    loop.py         train(config, run_dir, resume=…): the loop, checkpoints, exact resume
    compare.py      several algorithms from the same initial weights: compare.json, compare.png, the table
    recipes.py      the published comparisons (compare --recipe) and the default job's learning demo
    feedforward.py  the feed-forward backprop-free rules on a static task (refimpl/bpfree)
    sweep.py        any train / bpfree field × seeds, two stages (scan on validation, then seeds), resumable
    executor.py     where a sweep's trials run: inline, an embedded Dask LocalCluster, or a Dask scheduler's cluster
    tracking.py     a run's metrics as TensorBoard event files and W&B runs (--log)
"""
