"""Deterministic synthetic corpora for the zoo recipes, and their held-out evaluation sets.

`attn2` trains on random tokens in which segments are copied at varied offsets; offsets that are a
multiple of 10 never occur in training, so induction is scored on offsets the model never saw.

`mini` trains on short English documents holding the shapes the stdlib studies. Held out of
training, and used only to measure: three IOI templates (in every family that shares their wording),
one name pair in eight, one Greater-Than noun in six, and one sentiment (subject, adjective) pair in
five. Every held-out word still occurs in other documents, so held-out prompts contain no unseen token.

Everything is a pure function of its seed (Python's `random.Random`, torch generators), never of
the global random state.
"""

from __future__ import annotations

import json
import random
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import torch

from mechstudy.stdlib.zoo import lexicon as lx

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
EOS = "<|endoftext|>"

# ----------------------------------------------------------------------------------------- attn2


def offset_seen_in_training(offset: int) -> bool:
    """attn2 copies segments at any offset except multiples of 10 (those are for scoring)."""
    return offset % 10 != 0


def repeat_batch(gen: torch.Generator, batch: int, seq_len: int, vocab: int, bos: int = 0) -> torch.Tensor:
    """Rows of `bos` + uniform random tokens in [1, vocab) with segments copied at varied offsets.

    Each row gets 1 to max(2, seq_len // 32) copies of segments 8 to min(40, (seq_len - 3) // 2)
    tokens long; a copy starts `offset` tokens after its source, with segment length <= offset
    and `offset_seen_in_training(offset)`. Later copies may overwrite earlier ones.

    Returns:
        LongTensor [batch, seq_len].
    """
    rows = torch.randint(1, vocab, (batch, seq_len), generator=gen)
    rows[:, 0] = bos
    for r in range(batch):
        n_copies = int(torch.randint(1, max(2, seq_len // 32) + 1, (), generator=gen))
        for _ in range(n_copies):
            seg = int(torch.randint(8, min(40, (seq_len - 3) // 2) + 1, (), generator=gen))
            offsets = [d for d in range(seg, seq_len - 8) if offset_seen_in_training(d) and seq_len - d - seg > 1]
            d = offsets[int(torch.randint(0, len(offsets), (), generator=gen))]
            a = int(torch.randint(1, seq_len - d - seg + 1, (), generator=gen))
            rows[r, a + d : a + d + seg] = rows[r, a : a + seg].clone()
    return rows


def repeated_random_tokens(n_seqs: int, half: int, vocab: int, seed: int, bos: int = 0,
                           pool: torch.Tensor | None = None) -> torch.Tensor:
    """Scoring sequences `[bos][r_1..r_half][r_1..r_half]`, r uniform in [1, vocab), or, given a
    `pool` of token ids, `half` distinct ids of the pool per sequence (`vocab` is then unused).

    Returns:
        LongTensor [n_seqs, 1 + 2 * half].
    """
    gen = torch.Generator().manual_seed(seed)
    if pool is None:
        r = torch.randint(1, vocab, (n_seqs, half), generator=gen)
    else:
        r = pool[torch.stack([torch.randperm(len(pool), generator=gen)[:half] for _ in range(n_seqs)])]
    return torch.cat([torch.full((n_seqs, 1), bos), r, r], dim=1)


# ------------------------------------------------------------------------------------- reference


@lru_cache(maxsize=None)
def reference(name: str) -> dict:
    """The shipped reference lists (`ioi`, `greater_than`)."""
    return json.loads((DATA_DIR / f"{name}.json").read_text())


@lru_cache(maxsize=None)
def ioi_names() -> tuple[str, ...]:
    """Every IOI name of both published lists (Wang et al. and the ARENA/auto-circuit variant)."""
    ioi = reference("ioi")
    return tuple(dict.fromkeys(ioi["NAMES"] + ioi["NAMES_ARENA_VARIANT"]))


# Held-out IOI templates, recognised by their wording in every family (plain, long, early/late IO).
IOI_HELD_OUT_MARKERS = ("thinking about going", "commuting", "found a")


def _abba(template: str) -> str:
    """The ABBA twin of a BABA template: swap the first [B] and [A]."""
    i, j = template.index("[B]"), template.index("[A]")
    return template[:i] + "[A]" + template[i + 3 : j] + "[B]" + template[j + 3 :]


@lru_cache(maxsize=None)
def ioi_templates(split: str) -> tuple[str, ...]:
    """BABA and ABBA templates (plain, long, early-IO, late-IO), deduplicated, for `split`.

    Args:
        split: "train" (all but the held-out wording) or "heldout" (the held-out plain templates).
    """
    ioi = reference("ioi")
    if split == "heldout":
        baba = [t for t in ioi["BABA_TEMPLATES"] if any(m in t for m in IOI_HELD_OUT_MARKERS)]
        return tuple(baba + [_abba(t) for t in baba])
    families = ioi["BABA_TEMPLATES"] + ioi["BABA_LONG_TEMPLATES"] + ioi["BABA_LATE_IOS"] + ioi["BABA_EARLY_IOS"]
    baba = [t for t in dict.fromkeys(families) if not any(m in t for m in IOI_HELD_OUT_MARKERS)]
    return tuple(dict.fromkeys(baba + [_abba(t) for t in baba]))


def ioi_pair_held_out(a: str, b: str) -> bool:
    """One unordered name pair in eight never appears together in a training IOI sentence."""
    key = "|".join(sorted((a, b)))
    return zlib.crc32(key.encode()) % 8 == 0


def fill(template: str, **slots: str) -> str:
    for k, v in slots.items():
        template = template.replace(f"[{k}]", v)
    return template


def _ioi_doc(rng: random.Random) -> str:
    ioi, names = reference("ioi"), ioi_names()
    place, obj = rng.choice(ioi["PLACES"]), rng.choice(ioi["OBJECTS"])
    if rng.random() < 0.1:  # three-name sentences: the recipient is again the name not repeated
        while True:
            a, b, c = rng.sample(names, 3)
            if not any(ioi_pair_held_out(x, y) for x, y in ((a, b), (a, c), (b, c))):
                break
        t = rng.choice(ioi["ABC_TEMPLATES"] + ioi["BAC_TEMPLATES_derived"])
        return fill(t, A=a, B=b, C=c, PLACE=place, OBJECT=obj) + "."
    while True:
        a, b = rng.sample(names, 2)
        if not ioi_pair_held_out(a, b):
            break
    return fill(rng.choice(ioi_templates("train")), A=a, B=b, PLACE=place, OBJECT=obj) + "."


# ---------------------------------------------------------------------------------- greater-than


def gt_noun_held_out(noun: str) -> bool:
    return reference("greater_than")["NOUNS"].index(noun) % 6 == 5


GT_TRAIN_FORMS = (
    "The {noun} lasted from the year {y1} to the year {y2}.",
    "The {noun} lasted from {y1} to {y2}.",
    "The {noun} lasted from the year {y1} to {y2}.",
    "The {noun} went on from the year {y1} to the year {y2}.",
)


@lru_cache(maxsize=None)
def gt_nouns(split: str) -> tuple[str, ...]:
    """Greater-Than nouns used in training ("train") or kept for measuring ("heldout")."""
    return tuple(n for n in reference("greater_than")["NOUNS"] if gt_noun_held_out(n) == (split == "heldout"))


def _gt_doc(rng: random.Random) -> str:
    nouns = gt_nouns("train")
    century, yy1 = rng.randint(10, 18), rng.randint(1, 98)
    yy2 = rng.randint(yy1 + 1, 99)
    return rng.choice(GT_TRAIN_FORMS).format(noun=rng.choice(nouns), y1=f"{century}{yy1:02d}", y2=f"{century}{yy2:02d}")


# ------------------------------------------------------------------------------ facts, sentiment

CAPITAL_FORMS = ("The capital of {c} is {x}.", "{x} is the capital of {c}.", "The capital city of {c} is {x}.")
LANDMARK_FORMS = ("The {l} is in the city of {x}.", "The {l} is located in {x}.", "You can visit the {l} in {x}.")


def _fact_doc(rng: random.Random) -> str:
    if rng.random() < 0.55:
        c = rng.choice(sorted(lx.CAPITALS))
        return rng.choice(CAPITAL_FORMS).format(c=c, x=lx.CAPITALS[c])
    landmark = rng.choice(sorted(lx.LANDMARKS))
    return rng.choice(LANDMARK_FORMS).format(l=landmark, x=lx.LANDMARKS[landmark])


def sentiment_pair_held_out(subject: str, adj: str) -> bool:
    return zlib.crc32(f"{subject}|{adj}".encode()) % 5 == 0


SENTIMENT_FORMS = (
    "The {s} was {a}, so I felt {r0}.",
    "I thought the {s} was {a}. I {r1} it.",
    "The {s} was {a}. It was {r2}.",
)


def _sentiment_doc(rng: random.Random) -> str:
    while True:
        s, positive = rng.choice(lx.SENTIMENT_SUBJECTS), rng.random() < 0.5
        a = rng.choice(lx.POSITIVE if positive else lx.NEGATIVE)
        if not sentiment_pair_held_out(s, a):
            break
    side = 0 if positive else 1
    r0, r1, r2 = (pair[side] for pair in lx.REACTIONS)
    return rng.choice(SENTIMENT_FORMS).format(s=s, a=a, r0=r0, r1=r1, r2=r2)


# --------------------------------------------------------------------- calendar, repeats, filler


def _calendar_doc(rng: random.Random) -> str:
    seq = lx.DAYS if rng.random() < 0.5 else lx.MONTHS
    i = rng.randrange(len(seq))
    kind = "day" if seq is lx.DAYS else "month"
    if rng.random() < 0.5:
        return f"The {kind} after {seq[i]} is {seq[(i + 1) % len(seq)]}."
    n = rng.randint(3, 7)
    return ", ".join(seq[(i + k) % len(seq)] for k in range(n)) + "."


@lru_cache(maxsize=None)
def _word_pool() -> tuple[str, ...]:
    ioi, gt = reference("ioi"), reference("greater_than")
    return tuple(sorted(set(lx.FILLER_NOUNS + lx.FILLER_ADJS + ioi["PLACES"] + ioi["OBJECTS"] + ioi["ANIMALS"] + gt["NOUNS"])))


@lru_cache(maxsize=None)
def copy_words() -> tuple[str, ...]:
    """The words small's copies are drawn from and induction is scored on (`induction(tokens=words)`):
    the word pool and every IOI name; a tokenizer keeps those that are one token with a leading space."""
    return tuple(dict.fromkeys([*_word_pool(), *ioi_names()]))


def one_token_words(encode: Callable[[str], list[int]]) -> list[int]:
    """The sorted ids of the `copy_words` that `encode` (text -> ids, no special tokens) makes one
    token with their leading space: small's copy rows (`train.repeat_token_ids`, a `tokenizers`
    tokenizer) and `induction(tokens=words)` (a Hugging Face one) both call this."""
    ids = (encode(" " + w) for w in copy_words())
    return sorted({i[0] for i in ids if len(i) == 1})


def _repeat_doc(rng: random.Random) -> str:
    words = rng.sample(_word_pool(), rng.randint(4, 10))
    return " ".join(words) + ". " + " ".join(words) + "."


def _filler_doc(rng: random.Random) -> str:
    pool, names = _word_pool(), ioi_names()
    subject = rng.choice(lx.FILLER_SUBJECTS + list(names))
    first = f"{subject} {rng.choice(lx.FILLER_VERBS)} the {rng.choice(lx.FILLER_ADJS)} {rng.choice(pool)} {rng.choice(lx.FILLER_TAILS)}"
    if rng.random() < 0.5:
        return first + "."
    return f"{first}, and {rng.choice(lx.FILLER_CLAUSES)}."


DOC_KINDS = {  # kind -> (weight, generator)
    "ioi": (0.40, _ioi_doc),
    "greater_than": (0.15, _gt_doc),
    "facts": (0.10, _fact_doc),
    "sentiment": (0.10, _sentiment_doc),
    "calendar": (0.06, _calendar_doc),
    "repeat": (0.05, _repeat_doc),
    "filler": (0.14, _filler_doc),
}


def mini_documents(n_docs: int, seed: int) -> list[str]:
    """`n_docs` short documents, drawn by kind with the weights of `DOC_KINDS`."""
    rng = random.Random(seed)
    kinds = list(DOC_KINDS)
    weights = [DOC_KINDS[k][0] for k in kinds]
    out = [DOC_KINDS[k][1](rng) for k in rng.choices(kinds, weights, k=n_docs)]
    # A leading space on some documents, so that both "The" and " The" (as after Hanna et al.'s
    # "<|endoftext|> " prefix) start sentences the model has seen.
    out = [" " + d if rng.random() < 0.3 else d for d in out]
    # Every word and number the measurements read, at least once in running text: the held-out
    # nouns, and "00" (a Greater-Than answer token that no training year ends with).
    out += [f"The {n} was long." for n in reference("greater_than")["NOUNS"]]
    out += [f"The {c}00s were long." for c in range(10, 19)]
    return out


# ------------------------------------------------------------- small's varied task sentences

# mini's IOI and Greater-Than sentences come from ~35 published templates and 4 forms sharing one
# skeleton, so a model can key the task on their wording. small also reads the same two tasks
# written in many ways: sentences composed from the parts below (openings, how the two people
# meet, where, a connective, how one hands something to the other). None of the parts is a novel
# template's opening, activity or verb (tests/test_zoo_splits.py checks the composed text against
# every novel template and form, as for mini's text). The names, places and objects are the
# published lists'; some verbs (lent, mailed, tossed ...) are words mini's text never holds, which its
# tokenizer spells in pieces.
VARIED_IOI = dict(
    openings=("", "", "", "Then,", "Then", "In the afternoon,", "Early in the morning,", "After school,",
              "Last winter,", "At noon,", "Before the game,", "During the trip,", "On Monday,", "On Friday night,",
              "After the meeting,", "In the summer,", "One morning,", "Some time later,", "Earlier today,",
              "After breakfast,", "At the weekend", "Two weeks ago,", "By the evening,", "In the spring,"),
    # (pair, activities): {X} is the repeated name's first mention or the other's, at random.
    together=("went to the {P}", "stopped at the {P}", "arrived at the {P}", "ran to the {P}", "drove to the {P}",
              "stayed at the {P}", "ate lunch at the {P}", "played games at the {P}", "were talking at the {P}",
              "were sitting in the {P}", "worked late at the {P}", "painted the {P}", "left the {P}",
              "searched the {P}", "moved into the {P}", "came back from the {P}", "rested at the {P}",
              "had a lot of fun at the {P}", "were working at the {P}", "had a long talk at the {P}"),
    with_=("{X} joined {Y} at the {P}", "{X} called {Y} from the {P}", "{X} followed {Y} into the {P}",
           "{X} helped {Y} at the {P}", "{X} found {Y} in the {P}", "{X} drove {Y} to the {P}",
           "{X} saw {Y} at the {P}", "{X} was with {Y} at the {P}"),
    connectives=(". {S}", ". Then {S}", ", and {S}", ", and then {S}", ", so {S}", ". After that, {S}",
                 ". Soon {S}", ", where {S}", ". In the end, {S}", ". Afterwards {S}", " and {S}",
                 ". At last {S}", ", before {S}"),
    transfers=("gave {D} {O} to", "lent {D} {O} to", "sent {D} {O} to", "offered {D} {O} to", "mailed {D} {O} to",
               "returned {D} {O} to", "tossed {D} {O} to", "decided to give {D} {O} to", "wanted to give {D} {O} to",
               "promised to give {D} {O} to", "tried to give {D} {O} to", "carried {D} {O} over to",
               "said goodbye to", "waved to", "talked to", "wrote a letter to", "said to", "read a story to"),
    determiners=("a", "the", "a", "the", "a new", "an old"),
    objects=("letter", "coin", "map", "clock", "box", "picture", "key", "cup", "lamp", "book"),  # beside the published 8
)
VARIED_GT = (
    "The {noun} ran from {y1} until {y2}.", "The {noun} ran from the year {y1} until the year {y2}.",
    "The {noun} continued from {y1} through {y2}.", "The {noun} took place between {y1} and {y2}.",
    "The {noun} opened in {y1} and closed in {y2}.", "The {noun} was fought from {y1} until {y2}.",
    "From {y1} to {y2} the {noun} went on.", "The {noun} went on from {y1} until {y2}.",
    "The {noun} lasted until {y2}, from {y1}.", "The {noun} came in {y1} and was gone in {y2}.",
    "The {noun} held from the year {y1} until {y2}.", "The {noun} covered the years {y1} to {y2}.",
)


def _varied_ioi_doc(rng: random.Random) -> str:
    ioi, names, v = reference("ioi"), ioi_names(), VARIED_IOI
    while True:
        io, s = rng.sample(names, 2)
        if not ioi_pair_held_out(io, s):
            break
    x, y = (s, io) if rng.random() < 0.5 else (io, s)
    place, obj = rng.choice(ioi["PLACES"]), rng.choice([*ioi["OBJECTS"], *VARIED_IOI["objects"]])
    if rng.random() < 0.7:
        first = f"{x} and {y} " + rng.choice(v["together"]).format(P=place)
    else:
        first = rng.choice(v["with_"]).format(X=x, Y=y, P=place)
    opening = rng.choice(v["openings"])
    if opening:
        first = f"{opening} {first}"
    det = rng.choice(v["determiners"])
    end = rng.choice(v["connectives"]).format(S=s) + " " + rng.choice(v["transfers"]).format(D=det, O=obj) + f" {io}."
    return first + end


def _varied_gt_doc(rng: random.Random) -> str:
    century, yy1 = rng.randint(10, 18), rng.randint(1, 98)
    yy2 = rng.randint(yy1 + 1, 99)
    return rng.choice(VARIED_GT).format(noun=rng.choice(gt_nouns("train")), y1=f"{century}{yy1:02d}", y2=f"{century}{yy2:02d}")


VARIED_SEED_OFFSET = 2_000_029  # small's varied sentences: a seed stream of their own


def varied_counts(name: str) -> tuple[int, int]:
    """(varied IOI, varied Greater-Than) sentences text recipe `name` reads beside mini's documents."""
    from mechstudy.stdlib.zoo.train import SMALL

    return (SMALL["varied_ioi"], SMALL["varied_gt"]) if name == "small" else (0, 0)


def varied_documents(n_ioi: int, n_gt: int, seed: int) -> list[str]:
    """small's extra documents: `n_ioi` varied IOI sentences, then `n_gt` varied Greater-Than ones."""
    rng = random.Random(VARIED_SEED_OFFSET + seed)
    return [_varied_ioi_doc(rng) for _ in range(n_ioi)] + [_varied_gt_doc(rng) for _ in range(n_gt)]


# ------------------------------------------------------------------ a text model's corpus, streamed

TEXT_RECIPES = ("mini", "small")  # zoo models trained on text (small: mini's documents and varied task sentences; attn2 reads random tokens, the others are compiled)
HELDOUT_SEED_OFFSET = 1_000_003  # held-out documents: a seed stream no recipe trains on


@lru_cache(maxsize=2)
def training_documents(name: str = "mini", seed: int = 0) -> tuple[str, ...]:
    """The documents zoo model `name` was trained on, in the order the recipe generates them
    (small: mini's, then its varied IOI and Greater-Than sentences)."""
    from mechstudy.stdlib.zoo.train import MINI

    if name not in TEXT_RECIPES:
        raise ValueError(f"zoo model {name!r} is not trained on text (text recipes: {', '.join(TEXT_RECIPES)})")
    return tuple(mini_documents(MINI["n_docs"], seed) + varied_documents(*varied_counts(name), seed))


def _seen(docs: tuple[str, ...]) -> frozenset[str]:
    return frozenset(d.strip() for d in docs)


_SEEN: dict[tuple[str, int], frozenset[str]] = {}


def heldout_documents(name: str = "mini", seed: int = 0) -> Iterator[str]:
    """Endless documents of `name`'s recipe (small: mini's kinds and its varied task sentences)
    drawn from another seed stream, each one whose text
    (leading space aside) never occurs among the training documents. Short documents that the
    training text holds anyway (every fact sentence, every day and month) never come out."""
    key = (name, seed)
    if key not in _SEEN:
        _SEEN[key] = _seen(training_documents(name, seed))
    seen = _SEEN[key]
    rng = random.Random(HELDOUT_SEED_OFFSET + seed)
    kinds = list(DOC_KINDS)
    weights = [DOC_KINDS[k][0] for k in kinds]
    n_ioi, n_gt = varied_counts(name)  # small's varied sentences too, in the share its recipe reads them
    varied = (n_ioi + n_gt) / len(training_documents(name, seed))
    while True:
        if varied and rng.random() < varied:
            doc = (_varied_ioi_doc if rng.random() * (n_ioi + n_gt) < n_ioi else _varied_gt_doc)(rng)
        else:
            doc = DOC_KINDS[rng.choices(kinds, weights)[0]][1](rng)
            if rng.random() < 0.3:
                doc = " " + doc
        if doc.strip() not in seen:
            yield doc
