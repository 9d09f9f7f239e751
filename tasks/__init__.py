"""Data sets and task definitions (copy, adding, sequential/static digits, MNIST IDX loaders).

Nothing here yet: the tasks arrive with the training issue, which builds on the model stack and losses of refimpl.
"""
