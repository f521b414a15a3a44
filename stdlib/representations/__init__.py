"""Shared machinery of the representation operators (probes, similarity, lenses, attention scores,
top-activating examples, generation and steering, noise tracing).

Each module here is used by one or more operators in `stdlib/ops/` and by other stdlib parts:

- `examples`: top-activating dataset examples per unit or direction (neurons, SAE features),
  interval samples and activation histograms; the one implementation every dashboard uses.
- `generation`: greedy and seeded sampled generation through the adapter, with edits (steering).
- `probes`: batched linear / MLP probe fits over every layer at once, control tasks.
- `similarity`: linear and RBF CKA, RSA.
- `heads`: per-head attention scores (previous token, first token, self, duplicate token, prefix matching).
"""
