"""Backprop-free learning in feed-forward networks: BP, DFA, DRTP and local losses (docs/derivations/bpfree.md).

    network.py    the network: Net, make_net, buffers and feedback matrices, forward (1)–(8), the local backward of
                  one hidden layer (9)–(12), evaluate
    rules.py      the rules (13)–(17): which error each hidden layer's backward starts from; check_rule, warnings
    trackers.py   bp-cosine, weight alignment and gradient norms per layer (18)–(20)

Use it as ``from refimpl import bpfree``; every public name of the three modules is here, with the warning the rules
give (BpfreeWarning, defined in refimpl/errors.py). Batch norm and the activations are refimpl/nn/layers.py's; the
initialisers refimpl/nn/init.py's.
"""

from ..errors import BpfreeWarning
from ..nn.init import INITS
from ..nn.layers import ACTIVATIONS
from .network import (PROBLEMS, HiddenCache, Net, NetCache, check_input, dropout_mask, evaluate, forward,
                      hidden_backward, init_buffers, make_feedback, make_net, output_loss, target)
from .rules import (BOUNDED_ACTIVATIONS, RULES, RuleStep, check_rule, local_loss, projection_error, rule_grads,
                    rule_warnings, warn_rule)
from .trackers import alignment, tracker_layers, trackers, weight_alignment

__all__ = ["ACTIVATIONS", "BOUNDED_ACTIVATIONS", "INITS", "PROBLEMS", "RULES", "BpfreeWarning", "HiddenCache", "Net",
           "NetCache", "RuleStep", "alignment", "check_input", "check_rule", "dropout_mask", "evaluate", "forward",
           "hidden_backward", "init_buffers", "local_loss", "make_feedback", "make_net", "output_loss",
           "projection_error", "rule_grads", "rule_warnings", "target", "tracker_layers", "trackers", "warn_rule",
           "weight_alignment"]
