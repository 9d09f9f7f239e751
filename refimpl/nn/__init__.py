"""The model's pieces and the stack: the feed-forward layers (layers.py), the losses (losses.py), the initialisers
(init.py), the one walk through a stack of recurrent layers (stack.py) and the model built on it (model.py)."""
