"""Shared code of the circuit methods (EAP, ACDC, direct logit attribution, attribution patching).

- `graph`: the component graph (input, attention heads, MLPs, logits) and its edges.
- `writes`: each component's write to the residual stream (a head's: its z through its slice of
  the output projection). What circuit methods need about an architecture (final norm, attention
  and MLP norms, the attention module, parallel blocks) is in its one table (`models/archs/`).
- `gradients`: metric gradients at sites and at the graph's receiver inputs (autograd through the
  native modules, no re-implemented forward).
- `patching`: a forward in which chosen edges carry corrupted values (ACDC's intervention).

The operators that use them live in `stdlib/ops/` (attribute, attribute_edges, discover_circuit,
logit_attribution, gradient, compare).
"""
