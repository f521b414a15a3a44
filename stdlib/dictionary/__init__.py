"""Dictionary learning: sparse autoencoders (ReLU + L1, TopK, BatchTopK, JumpReLU), transcoders and
crosscoders on one machinery; their training (`train.py`), evaluation (`evaluate.py`), and loading
of published dictionaries (`formats.py`). Operators live in stdlib/ops/ (`train sae`, ...)."""
