"""Ground-truth circuits: models whose circuit is known by construction, to test circuit methods.

The models ship in the zoo as ordinary GPT-2 checkpoints (`zoo "induction-handwired"`,
`zoo "tracr-xproportion"`, `zoo "tracr-reverse"`), each with its true circuit in `truth.json`:

- `craft`: a transformer written as matrices over named residual dimensions (`Crafted`), its
  exact GPT-2 form (layer norms made identities) and an independent float64 forward.
- `induction`: the hand-wired previous-token + induction head circuit, with live distractors.
- `programs`: tracr's xproportion and a causal reverse as RASP programs, their plain-Python
  semantics, and the conversion of a tracr-compiled model into a `Crafted` (tracr needed only
  to compile: the `groundtruth` extra).
- `truth`: the true circuit derived from a checkpoint's weights; edge precision / recall and
  precision-recall curves (what the `score circuit` operator reports).
- `build`: `python -m mechstudy.stdlib.groundtruth.build [all|NAME]` writes the model directories.

Datasets: `induction` (existing), `xproportion`, `reverse` (stdlib/datasets/). Studies:
studies/groundtruth/.
"""
