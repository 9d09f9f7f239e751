"""The microbenchmark suite (`python -m bench`): every registry kernel × backend × dtype × size, timed after a parity
check, with roofline ratios, scaling curves, peers and plots — see bench/run.py. Also `python -m bench.goals` (the
backends' performance goals) and `python -m bench.online_memory` (peak memory of the online algorithms vs T)."""
