"""The activation store: a model's activations at one site over a corpus, as sharded safetensors.

Built once, used by every operator that trains or reads on activations (sparse autoencoders,
transcoders, crosscoders, tuned lenses, probes, top-activating examples, memory benchmarks).

Plan side (inside an `OpSpec.plan` hook)::

    from mechstudy.stdlib.activations import plan_shards, shard_inputs
    shards = plan_shards(b, model_node, corpus_node, "resid_post", layer=2, shard_tokens=65536)
    node = b.node("my_op", {**params, **shard_inputs(shards)})        # inputs "shard0_000", ...

Each shard is one cached `activations` node (rows [start, start + rows) of the corpus), so two
statements on the same (model, corpus, site, layer, shard size, dtype) share every shard, and a
larger corpus with the same packing reuses the shards it has in common. Several aligned columns
(one shard list per site, e.g. a transcoder's input and output or a crosscoder's layers) are
`shard_inputs(col0, col1, ...)`: column c's shard i is input ``shard{c}_{i:03d}``.

Run side (in the operator's `run`)::

    from mechstudy.stdlib.activations import ActivationStore
    store = ActivationStore.of(inputs)                      # every "shard*" input, columns aligned
    store.n, store.widths                                   # tokens, [width of each column]
    for xs in store.batches(4096, seed=0, start=0):        # shuffled, endless; xs: one [B, width] per column
        ...
    for xs, meta in store.scan(8192):                       # in corpus order; meta: token, row, pos
        ...

A shard artifact holds ``acts`` [tokens, width] (real tokens only, the site's axes after the
sequence flattened, in the stored dtype), ``token`` (token ids), ``row`` (corpus row) and ``pos``
(position in the row), all [tokens]. Reads are memory-mapped and window by window: `batches`
holds `window` shards at a time (shuffled within the window, windows in a fresh random order each
epoch), re-opening each shard's file from its store entry (`Artifact.path`) and dropping it
afterwards, so peak memory depends on the shard size and window, not on the corpus size
(benchmarks/bench_activation_store.py measures it at 1x, 4x and 16x).
"""

from mechstudy.stdlib.activations.shards import STORABLE, plan_shards, shard_inputs
from mechstudy.stdlib.activations.stream import ActivationStore

__all__ = ["ActivationStore", "STORABLE", "plan_shards", "shard_inputs"]
