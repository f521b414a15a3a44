"""`study new [TECHNIQUE]`: commented starter studies that run on the zoo's `mini` as written.

Each starter is a complete study: `study new patching > mine.study && study run mine.study`
computes in seconds on a laptop CPU. A test checks and runs every one of them.
"""

from __future__ import annotations

_HEAD = """\
# {title}
#
# {intro}
#
# Run it:      study run {file}
# Then read:   out/{stem}/report.html (charts, headline numbers, the plan), or
#              study show {file} {first}
# Change a line and rerun: only what the change touches is recomputed.
study "{title}"

# `zoo "mini"` is a 3-layer GPT-2 shipped with mechstudy (trained on IOI, Greater-Than and facts).
# Any local Hugging Face model works too: model m = hf "path/to/gpt2"
model m = zoo "mini"
"""

STARTERS: dict[str, dict[str, str]] = {
    "patching": {
        "title": "Activation patching on IOI",
        "intro": ("Which heads and positions carry the indirect object's name? Patch clean activations\n"
                  "# into the corrupted run: effect 1 = clean behaviour restored, 0 = nothing restored."),
        "first": "heads",
        "body": """\
# 32 IOI prompts ("When Mary and John went to the store, John gave a drink to" -> " Mary"),
# each with an ABC-corrupted twin (three unrelated names).
dataset ioi = ioi(n=32, seed=0)

base  = evaluate m on ioi with logit_diff                               # how well m does the task
heads = patch heads in all layers of m on ioi with logit_diff           # one patch per head
resid = patch resid at every position in all layers of m on ioi with logit_diff

plot heads as heatmap titled "Head patching (normalised logit difference)"
""",
    },
    "attribution": {
        "title": "Attribution patching against activation patching",
        "intro": ("Attribution patching estimates every patch at once from one backward pass;\n"
                  "# `compare` puts it beside the real patching (Spearman, Pearson and top-k overlap)."),
        "first": "versus",
        "body": """\
dataset ioi = ioi(n=32, seed=0)

atp    = attribute heads in all layers of m on ioi with logit_diff     # the estimate
heads  = patch heads in all layers of m on ioi with logit_diff         # what it estimates
versus = compare atp with heads                                        # correlations + scatter
""",
    },
    "circuit": {
        "title": "Circuit discovery with ACDC",
        "intro": ("ACDC removes every edge of the head/MLP graph whose removal changes the output by less\n"
                  "# than the threshold; a list of thresholds is a sweep (one cached result each)."),
        "first": "circuit",
        "body": """\
# Greater-Than: "The war lasted from the year 1732 to the year 17" -> a year after 32.
dataset years = greater_than(n=16, seed=0)

base    = evaluate m on years with prob_diff
circuit = discover circuit of m on years with kl threshold [0.01, 0.03]
edges   = attribute edges of m on years with prob_diff                 # EAP: every edge's estimate

plot circuit as graph titled "ACDC circuit for Greater-Than"
""",
    },
    "ablation": {
        "title": "Ablating heads: zero, mean and resample",
        "intro": ("Knock each head out of the clean run and measure what is left\n"
                  "# (1 = the head does not matter, 0 = as bad as corrupting the prompt)."),
        "first": "mean",
        "body": """\
dataset ioi = ioi(n=32, seed=0)

zero     = ablate heads in all layers of m on ioi with logit_diff using zero
mean     = ablate heads in all layers of m on ioi with logit_diff using mean
resample = ablate heads in all layers of m on ioi with logit_diff using resample seed=0
""",
    },
    "path": {
        "title": "Path patching: which heads talk to which",
        "intro": ("A sender's effect through chosen receivers only, every other head frozen.\n"
                  "# Noising (the default here): 1 = the path does not matter."),
        "first": "direct",
        "body": """\
dataset ioi = ioi(n=32, seed=0, template=0)

direct  = patch path from heads in all layers of m on ioi with logit_diff
to_last = patch path from heads in layers 0..1 to heads in layer 2 of m on ioi with logit_diff
""",
    },
    "logit": {
        "title": "Direct logit attribution",
        "intro": ("Each head's and MLP's direct contribution to logit(IO) - logit(S), read through the\n"
                  "# final layer norm and the unembedding."),
        "first": "dla",
        "body": """\
dataset ioi = ioi(n=32, seed=0)

dla   = attribute logits of m on ioi
heads = patch heads in all layers of m on ioi with logit_diff
both  = compare dla with heads
""",
    },
}
DEFAULT = "patching"


def starter(technique: str | None = None, file: str = "mine.study") -> str:
    """The starter study for `technique` (default: patching). Raises KeyError for an unknown one.

    >>> starter("attribution").count("versus = compare atp with heads")
    1
    """
    from mechstudy.engine.fmt import format_text

    s = STARTERS[technique or DEFAULT]
    stem = file.rsplit("/", 1)[-1].removesuffix(".study")
    text = _HEAD.format(file=file, stem=stem, **{k: v for k, v in s.items() if k != "body"}) + "\n" + s["body"]
    return format_text(text)  # what `study fmt` would make of it
