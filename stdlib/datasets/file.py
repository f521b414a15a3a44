"""`file`: the user's own prompts from a csv / tsv / parquet / jsonl / json file, read with polars.

    dataset mine = file "data/prompts.csv" prompt=text answer=city wrong=other corrupted=text2 label=kind

Each option names the file's column that plays one role; only `prompt` is needed (its column
defaults to ``prompt``), and what the others add is what the dataset provides:

==============  ==========================================  =================================
option          column holds                                gives (tensors; capability)
==============  ==========================================  =================================
``prompt``      the clean prompt text                       clean_ids, attention_mask, answer_pos
``answer``      the correct next token's text               io_id
``wrong``       a wrong next token's text                   s_id; "answers" with ``answer``
``corrupted``   a corrupted prompt, as many tokens long     corrupted_ids; "corrupted"
                as its clean prompt
``label``       a class (string, bool, int) or a number     labels; "labels"
==============  ==========================================  =================================

So `answer` + `wrong` give `logit_diff` (logit[answer] - logit[wrong]), `answer` alone `prob` and
`loss`, and `corrupted` the clean/corrupted pairs every patching operator reads. Answers must be
one token: ``answer_space`` (default true) reads " Paris" for an answer written ``Paris`` after a
prompt that does not end in a space, as the words would join in running text; set it false to
tokenise answers exactly as written (e.g. the "32" after "... to the year 17"). String and bool
labels become class indices (sorted; the names are in ``data["label_classes"]``), whole numbers stay
as they are, other numbers become float labels.

Prompts are right padded (`answer_pos` is each prompt's last real token); `prompts` keeps the
declared columns of every row used (rows count from 0). A relative path is read from the current
directory (where `study` runs), not the study file's folder. A declared column the file lacks, a
missing value, an answer that is not one token or a corrupted prompt of another length is an error
that names the column and the rows.

Caching: a dataset node is keyed by its params. `prepare(params)` adds ``content_hash`` (the file's
bytes) so that editing the file makes a new node; the checker is meant to call it (see
`provides_of` too). When run, the generator re-hashes the file and refuses one that changed since.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import torch

from mechstudy.engine import spec
from mechstudy.engine.fingerprint import file_hash
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import pad_id_of, tokenizer_of

FORMATS = ("auto", "csv", "tsv", "parquet", "jsonl", "json")
_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
           ".ndjson": "jsonl", ".json": "json"}
ROLES = ("prompt", "answer", "wrong", "corrupted", "label")  # the column options, in the order of the table
_SHOWN = 5  # rows listed in an error


class ColumnError(ValueError):
    """A problem with the file or its columns, blamed on one option of the declaration.

    Attributes:
        message: what is wrong, naming the file and column.
        option: the study option at fault ("path", "prompt", "answer", ...), for the caret.
        hint: what to write instead (did-you-mean, the file's columns), or None.
    """

    def __init__(self, message: str, option: str | None = None, hint: str | None = None) -> None:
        super().__init__(message + (f"; {hint}" if hint else ""))
        self.message, self.option, self.hint = message, option, hint


def resolve(path: str) -> Path:
    """The file a `path` option names: relative paths are read from the current directory. For a
    study opened from a pack (engine/confine.py), only relative paths inside the pack are allowed."""
    from mechstudy.engine.confine import Escape, data_path

    try:
        return data_path(path)
    except Escape as e:
        raise ColumnError(e.message, "path", e.hint) from None


def file_format(path: str, fmt: str = "auto") -> str:
    """The format to read `path` as: `fmt`, or from the file's suffix when "auto".

    >>> file_format("x/prompts.JSONL"), file_format("data.txt", "csv")
    ('jsonl', 'csv')
    """
    if fmt != "auto":
        return fmt
    got = _SUFFIX.get(Path(path).suffix.lower())
    if got is None:
        raise ColumnError(f"cannot tell the format of {path} from its suffix", "path",
                          f"name a .csv, .tsv, .parquet, .jsonl or .json file, or say format=csv (or tsv, ...)")
    return got


def _read(p: Path, fmt: str, schema_only: bool) -> pl.DataFrame | list[str]:
    if fmt in ("csv", "tsv"):
        lf = pl.scan_csv(p, separator="\t" if fmt == "tsv" else ",", infer_schema_length=10_000)
    elif fmt == "parquet":
        lf = pl.scan_parquet(p)
    elif fmt == "jsonl":
        lf = pl.scan_ndjson(p, infer_schema_length=10_000)
    else:
        lf = pl.read_json(p).lazy()
    return lf.collect_schema().names() if schema_only else lf.collect()


def read(path: str, fmt: str = "auto", schema_only: bool = False) -> pl.DataFrame | list[str]:
    """The file's table (or only its column names), with errors that name the file."""
    p = resolve(path)
    if not p.is_file():
        raise ColumnError(f"no such file: {path}", "path",
                          f"relative paths are read from the current directory ({Path.cwd()})")
    fmt = file_format(path, fmt)
    try:
        return _read(p, fmt, schema_only)
    except (pl.exceptions.PolarsError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ColumnError(f"cannot read {path} as {fmt}: {excerpt(first, 100)}", "path") from None


def excerpt(text: Any, n: int = 40) -> str:
    r"""Text from the user's file as messages may quote it: at most `n` characters, escaped. Errors
    never echo more of a data file than that.

    >>> excerpt("secret\tline " * 10, 12)
    'secret\\tline ...'
    """
    from mechstudy.lang.errors import _escape

    text = str(text)
    return _escape(text[:n]) + ("..." if len(text) > n else "")


def declared(params: dict) -> dict[str, str]:
    """{role: column} for every column option given (prompt always: it defaults to "prompt")."""
    out = {r: params.get(r) for r in ROLES}
    out["prompt"] = out["prompt"] or "prompt"
    return {r: c for r, c in out.items() if c is not None}


def check_columns(path: str, columns: list[str], params: dict) -> None:
    """Raise a `ColumnError` for the first declared column that `columns` lacks."""
    for role, col in declared(params).items():
        if col in columns:
            continue
        given = f"given as {role}={col}" if params.get(role) else f"{role}= defaults to '{col}'"
        best = spec.suggest(col, columns)
        listing = "its columns are: " + ", ".join(excerpt(c, 30) for c in columns[:30]) + (", ..." if len(columns) > 30 else "")
        hint = f"did you mean '{best}'? {listing}" if best else (
            f"name the column with {role}=COLUMN; {listing}" if not params.get(role) else listing)
        raise ColumnError(f"{path} has no column '{col}' ({given})", role, hint)


def provides_of(params: dict) -> frozenset[str]:
    """The capabilities a `file` dataset has, from the columns it declares.

    >>> sorted(provides_of({"path": "x.csv", "answer": "a", "wrong": "b", "label": "y"}))
    ['answers', 'labels']
    """
    caps = set()
    if params.get("answer") and params.get("wrong"):
        caps.add("answers")
    if params.get("corrupted"):
        caps.add("corrupted")
    if params.get("label"):
        caps.add("labels")
    return frozenset(caps)


def prepare(params: dict) -> dict:
    """Check the file and its declared columns (reading only its schema) and return `params` with
    ``content_hash``, the hash of the file's bytes, so the dataset node's key follows the content.
    Raises `ColumnError`. Meant for the checker; cheap for parquet, one scan of a csv's header."""
    fmt = params.get("format") or "auto"
    columns = read(params["path"], fmt, schema_only=True)
    check_columns(params["path"], columns, params)
    return {**params, "content_hash": file_hash(resolve(params["path"]))}


def _rows(bad: list[int]) -> str:
    shown = ", ".join(map(str, bad[:_SHOWN]))
    return f"row{'s' if len(bad) > 1 else ''} {shown}" + (f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else "")


def _answer_ids(tokenizer: Any, answers: list[str], prompts: list[str], space: bool, path: str, role: str,
                col: str) -> list[int]:
    """The single token of each answer (after a space where `space` says so), else a ColumnError.
    Each distinct answer is tokenised once (answers repeat: a column of names, years, labels)."""
    if space:  # as the answer would follow its prompt in running text
        answers = [" " + a if a and not a[0].isspace() and not p[-1:].isspace() else a
                   for a, p in zip(answers, prompts)]
    distinct = list(dict.fromkeys(answers))
    flat, lengths = _batched(tokenizer, distinct, False, None)
    starts = lengths.cumsum() - lengths
    unk = tokenizer.unk_token_id
    one = {a: int(flat[s]) for a, s, k in zip(distinct, starts, lengths)
           if k == 1 and (unk is None or int(flat[s]) != unk)}
    bad = [i for i, a in enumerate(answers) if a not in one]
    if bad:
        i = bad[0]
        k = int(lengths[distinct.index(answers[i])])
        what = "1 token, unknown" if k == 1 else f"{k} tokens"
        raise ColumnError(f"{path}: column '{col}' ({role}=) must hold single tokens; {_rows(bad)} do not "
                          f"(row {i}: '{excerpt(answers[i])}' is {what})", role,
                          "answer_space=false tokenises answers exactly as written" if space else None)
    return [one[a] for a in answers]


def _labels(series: pl.Series) -> tuple[torch.Tensor, list | None]:
    dt = series.dtype
    if dt.is_integer():
        return torch.tensor(series.to_list(), dtype=torch.long), None
    if dt.is_float():
        return torch.tensor(series.to_list(), dtype=torch.float64), None
    values = series.cast(pl.String).to_list() if dt != pl.Boolean else series.to_list()
    classes = sorted(set(values))
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[v] for v in values], dtype=torch.long), classes


BATCH = 8192  # rows tokenised per call (one progress report and stop check per batch)


def _batched(tokenizer: Any, texts: list[str], add_special: bool, bos: int | None,
             tick: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of every text, `BATCH` texts per tokenizer call, as one flat int64 array and each
    text's length (a list of lists would take ~1 GB per million prompts); `bos` prepended when not None."""
    flats, lengths = [], []
    encode = _encoder(tokenizer, texts[:64], add_special)
    for i in range(0, len(texts), BATCH):
        ids = encode(texts[i : i + BATCH])
        if bos is not None:
            ids = [[bos, *x] for x in ids]
        lengths.append(np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids)))
        flats.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths[-1].sum())))
        if tick is not None:
            tick(min(i + BATCH, len(texts)))
    if not flats:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(flats), np.concatenate(lengths)


def _encoder(tokenizer: Any, sample: list[str], add_special: bool) -> Callable[[list[str]], list[list[int]]]:
    """The fastest way to get `tokenizer(texts)["input_ids"]`: the Rust tokenizer's
    `encode_batch_fast` (no offsets, no Python wrapper: about a third less CPU per prompt) when the
    tokenizer has one and it gives the same ids on `sample`, else the tokenizer itself."""
    def slow(batch: list[str]) -> list[list[int]]:
        return tokenizer(batch, add_special_tokens=add_special)["input_ids"]

    backend = getattr(tokenizer, "backend_tokenizer", None)
    fast = getattr(backend, "encode_batch_fast", None)
    if fast is None or not sample:
        return slow

    def quick(batch: list[str]) -> list[list[int]]:
        return [e.ids for e in fast(batch, add_special_tokens=add_special)]

    try:
        return quick if quick(sample) == [list(x) for x in slow(sample)] else slow
    except Exception:  # noqa: BLE001 - any trouble with the shortcut: use the tokenizer as it is
        return slow


def _encode_all(tokenizer: Any, texts: list[str], prepend_bos: bool | None,
                tick: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`stdlib.datasets.encode` of every text, in batches (the same ids, row by row): flat, lengths."""
    bos = None
    if prepend_bos:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if bos is None:
            raise ValueError("prepend_bos=true but the tokenizer has no bos or eos token")
    return _batched(tokenizer, texts, prepend_bos is None, bos, tick)


def _pad(flat: np.ndarray, lengths: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`stdlib.datasets.pad_right` of flat ids: right padded [N, S] ids and attention mask."""
    width = int(lengths.max())
    mask = np.arange(width)[None, :] < lengths[:, None]
    ids = np.full((len(lengths), width), pad_id, dtype=np.int64)
    ids[mask] = flat
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


def generate(tokenizer: Any, table: pl.DataFrame, params: dict,
             progress: Callable[[int, int, str], None] | None = None) -> Artifact:
    """Tokenise the declared columns of `table` (see the module docstring). `progress(done, total,
    note)` is called after every batch of rows (the engine passes `ctx.progress`, which also stops
    the work when the user interrupts the run)."""
    path = params["path"]
    check_columns(path, table.columns, params)
    cols = declared(params)
    if params.get("n") is not None:
        if params["n"] < 1:
            raise ColumnError("n must be at least 1", "n")
        table = table.head(params["n"])
    if table.height == 0:
        raise ColumnError(f"{path} has no rows", "path")
    for role, col in cols.items():
        nulls = table.get_column(col).is_null().arg_true().to_list()
        if nulls:
            raise ColumnError(f"{path}: column '{col}' ({role}=) has no value in {_rows(nulls)}", role)
    text = {r: table.get_column(c).cast(pl.String).to_list() for r, c in cols.items() if r != "label"}
    total = table.height * len(text)
    done = [0]

    def ticker(offset: int) -> Callable[[int], None] | None:
        if progress is None:
            return None
        return lambda k: progress(offset + k, total, "rows tokenised")

    bos = params.get("prepend_bos")
    clean, clean_len = _encode_all(tokenizer, text["prompt"], bos, ticker(0))
    done[0] += table.height
    empty = np.flatnonzero(clean_len == 0).tolist()
    if empty:
        raise ColumnError(f"{path}: column '{cols['prompt']}' (prompt=) is empty in {_rows(empty)}", "prompt")
    pad = pad_id_of(tokenizer)
    clean_ids, mask = _pad(clean, clean_len, pad)
    tensors: dict[str, torch.Tensor] = {"clean_ids": clean_ids, "attention_mask": mask, "answer_pos": mask.sum(1) - 1}
    if "corrupted" in text:
        corrupted, corrupted_len = _encode_all(tokenizer, text["corrupted"], bos, ticker(done[0]))
        done[0] += table.height
        bad = np.flatnonzero(corrupted_len != clean_len).tolist()
        if bad:
            i = bad[0]
            raise ColumnError(f"{path}: corrupted prompts (column '{cols['corrupted']}') must be as many tokens "
                              f"long as their prompts; {_rows(bad)} are not (row {i}: {corrupted_len[i]} "
                              f"tokens, its prompt {clean_len[i]})", "corrupted")
        tensors["corrupted_ids"] = _pad(corrupted, corrupted_len, pad)[0]
    space = params.get("answer_space", True)
    for role, name in (("answer", "io_id"), ("wrong", "s_id")):
        if role in text:
            ids = _answer_ids(tokenizer, text[role], text["prompt"], space, path, role, cols[role])
            tensors[name] = torch.tensor(ids, dtype=torch.long)
            done[0] += table.height
            if progress is not None:
                progress(done[0], total, "rows tokenised")
    data: dict[str, Any] = {"path": path, "columns": cols, "n": table.height, "provides": sorted(provides_of(params)),
                            "prepend_bos": bos, "answer_space": space, "padding": "right", "pad_id": pad,
                            "max_len": int(clean_ids.shape[1])}
    if "label" in cols:
        tensors["labels"], classes = _labels(table.get_column(cols["label"]))
        data["label_classes"] = classes
    rows = table.select([pl.col(c).alias(r) for r, c in cols.items()]).with_columns(
        pl.int_range(0, table.height).alias("row"),
        pl.Series("length", clean_len),
        pl.Series("answer_pos", clean_len - 1))
    return Artifact(tensors=tensors, tables={"prompts": rows.select(["row", *cols, "length", "answer_pos"])}, data=data)


# The checker calls `prepare` and `provides_for` when DatasetSpec has these fields (see the module docstring).
_CHECK_HOOKS = {k: v for k, v in (("prepare", prepare), ("provides_for", provides_of))
                if k in {f.name for f in dataclasses.fields(spec.DatasetSpec)}}


@spec.dataset(
    "file",
    version=1,
    params=[
        Param("path", str, doc="the file (relative paths: from the current directory)"),
        Param("prompt", str, "prompt", doc="column of the prompts"),
        Param("answer", str, None, doc="column of the correct answer token"),
        Param("wrong", str, None, doc="column of a wrong answer token (logit_diff = answer - wrong)"),
        Param("corrupted", str, None, doc="column of corrupted prompts (same token length as the prompts)"),
        Param("label", str, None, doc="column of labels (classes or numbers)"),
        Param("format", str, "auto", choices=FORMATS, doc="file format (auto: from the suffix)"),
        Param("n", int, None, minimum=1, doc="use the first n rows (default: all)"),
        Param("answer_space", bool, True, doc="read answers with a leading space, as they follow the prompt"),
        Param("prepend_bos", bool, None, doc="force a leading BOS on or off (default: the tokenizer's convention)"),
    ],
    # What any file can give; what one declaration gives is `provides_of(params)`.
    provides=frozenset({"answers", "corrupted", "labels"}),
    needs_model=True,
    **_CHECK_HOOKS,
)
def run(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """Prompts (and answers, corrupted prompts, labels) from the columns of a csv/tsv/parquet/jsonl/json file."""
    fmt = params.get("format") or "auto"
    table = read(params["path"], fmt)
    check_columns(params["path"], table.columns, params)  # before loading the tokenizer: fail fast
    now = file_hash(resolve(params["path"]))
    if params.get("content_hash") not in (None, now):
        raise ColumnError(f"{params['path']} changed after the study was checked", "path", "run the study again")
    art = generate(tokenizer_of(inputs["model"], ctx), table, params, progress=getattr(ctx, "progress", None))
    return Artifact(tensors=art.tensors, tables=art.tables,
                    data={**art.data, "format": file_format(params["path"], fmt), "content_hash": now})
