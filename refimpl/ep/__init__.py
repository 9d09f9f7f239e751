"""Equilibrium Propagation (Ernoult et al. 2019): networks with a static input that settle to a fixed point, trained by
comparing a free and a nudged phase — the dense networks (networks.py), the convolutional one (conv.py), the
activations they share (activations.py), the BPTT loop through a relaxation they share (relaxation.py), and EP for the
recurrent cells as a fixed-point problem (cells.py).

`refimpl.ep` is the dense networks' API: make a net, run its phases, take EP's or BPTT's gradients.
"""

from .activations import ACTIVATIONS, d2rho, drho, rho
from .networks import (DEFAULTS, DTYPES, NETWORKS, TOY_SIZES, EPNet, EPStepCache, bptt_grads, check_beta,
                       check_inputs, check_T, check_truncation, ep_grads, ep_update, free_phase, gdu_curves,
                       make_ep_net, net_from_kernel_args, nudged_phase, output_loss, predict, rmse,
                       sign_agreement)

__all__ = ["ACTIVATIONS", "DEFAULTS", "DTYPES", "NETWORKS", "TOY_SIZES", "EPNet", "EPStepCache", "bptt_grads",
           "check_beta", "check_inputs", "check_T", "check_truncation", "d2rho", "drho", "ep_grads", "ep_update",
           "free_phase", "gdu_curves", "make_ep_net", "net_from_kernel_args", "nudged_phase", "output_loss", "predict",
           "rho", "rmse", "sign_agreement"]
