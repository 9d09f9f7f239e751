"""Experiments that are not training runs: gradient checks (gradcheck.py), FPTT's stability study
(fptt_stability.py) and EP's GDU curves (ep_gdu.py)."""
