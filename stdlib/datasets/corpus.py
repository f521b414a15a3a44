"""Corpora: text streamed into fixed-length token rows, for training (SAEs, tuned lenses, probes over
activations) and for evaluation on text (a lens's KL, top-activating examples).

    corpus web  = text "data/books/*.txt" tokens=200000 context=128
    corpus wiki = parquet "data/wiki.parquet" column=text tokens=50000
    corpus mini = zoo "mini" split=train tokens=100000        # a zoo model's own training text

A corpus is tokenised by the model that reads it (like a dataset) and packed the way language
models are trained: documents in order, each followed by the tokenizer's end-of-text token (its
bos when it has no eos), cut into rows of exactly `context` tokens until `tokens` tokens are
taken (rows = tokens // context, at least one). A row may start mid-document; no padding except
in a single short row when the text runs out first (`attention_mask` marks it). The artifact holds
``input_ids`` and ``attention_mask`` [rows, context] and ``doc_id`` [rows, context] (which document
each token came from, -1 for separators and padding), so top-activating examples can show their
document; data records the documents and tokens used.

Sources (`corpus NAME = SOURCE "REF"`): ``text`` (a file, a directory or a glob of UTF-8 files,
sorted; documents are paragraphs, lines or whole files: `unit`), ``parquet`` (a column of a parquet
file, one document per row). Both are keyed by the content of the files they read (the checker
hashes them), so editing a file makes a new node. The ``zoo`` source streams a zoo model's corpus.
"""

from __future__ import annotations

import glob as globlib
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from mechstudy.engine import spec
from mechstudy.engine.fingerprint import file_hash
from mechstudy.engine.plan import canonical_json, hash_text
from mechstudy.engine.spec import Artifact, Param
from mechstudy.stdlib.datasets import tokenizer_of

MAX_TOKENS = 20_000_000  # a corpus node holds its token ids in memory: beyond this, shard the study
UNITS = ("paragraph", "line", "file")


class CorpusError(ValueError):
    """A problem with a corpus declaration, blamed on one option (for the checker's caret)."""

    def __init__(self, message: str, option: str | None = None, hint: str | None = None) -> None:
        super().__init__(message + (f"; {hint}" if hint else ""))
        self.message, self.option, self.hint = message, option, hint


def common_params() -> list[Param]:
    return [
        Param("tokens", int, 65_536, doc="tokens to take (rows = tokens // context)"),
        Param("context", int, 128, doc="tokens per row"),
    ]


def _check_sizes(params: dict) -> None:
    if params["context"] < 2:
        raise CorpusError(f"context must be at least 2 tokens, got {params['context']}", "context")
    if not params["context"] <= params["tokens"] <= MAX_TOKENS:
        raise CorpusError(f"tokens must be between context ({params['context']}) and {MAX_TOKENS:,}, got "
                          f"{params['tokens']}", "tokens", "raise it by sharding the study's text over several corpora")


def pack(docs: Iterable[str], tokenizer: Any, context: int, tokens: int, batch: int = 256) -> dict[str, torch.Tensor]:
    """Documents -> {input_ids, attention_mask, doc_id} [rows, context] (see the module docstring).

    >>> from mechstudy.stdlib.models.tiny import make_tiny_tokenizer
    >>> out = pack(["John went", "Mary"], make_tiny_tokenizer(), context=3, tokens=3)
    >>> out["input_ids"].shape, out["doc_id"].tolist()
    (torch.Size([1, 3]), [[0, 0, -1]])
    """
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    rows = max(1, tokens // context)
    want = rows * context
    ids: list[int] = []
    doc: list[int] = []
    it = iter(docs)
    d = 0
    while len(ids) < want:
        chunk = [t for _, t in zip(range(batch), it)]
        if not chunk:
            break
        for enc in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            ids += list(enc) + ([sep] if sep is not None else [])
            doc += [d] * len(enc) + ([-1] if sep is not None else [])
            d += 1
            if len(ids) >= want:
                break
    if not ids:
        raise CorpusError("the corpus has no text", "tokens")
    have = min(len(ids), want)
    rows = max(1, have // context) if have >= context else 1
    n = rows * context if have >= context else have
    out_ids = torch.full((rows * context,), int(sep or 0), dtype=torch.long)
    out_doc = torch.full((rows * context,), -1, dtype=torch.long)
    mask = torch.zeros(rows * context, dtype=torch.long)
    out_ids[:n] = torch.tensor(ids[:n], dtype=torch.long)
    out_doc[:n] = torch.tensor(doc[:n], dtype=torch.long)
    mask[:n] = 1
    return {"input_ids": out_ids.view(rows, context), "attention_mask": mask.view(rows, context),
            "doc_id": out_doc.view(rows, context)}


def _artifact(packed: dict[str, torch.Tensor], data: dict) -> Artifact:
    n_docs = int(packed["doc_id"].max()) + 1 if packed["doc_id"].numel() else 0
    return Artifact(tensors=packed, data={**data, "rows": int(packed["input_ids"].shape[0]),
                                          "context": int(packed["input_ids"].shape[1]),
                                          "tokens": int(packed["attention_mask"].sum()), "documents_used": n_docs})


# ---- text -------------------------------------------------------------------------------------


def text_files(path: str) -> list[Path]:
    """The files a `text` corpus reads: a file, every file under a directory, or a glob; sorted.
    Relative paths are read from the current directory (where `study` runs)."""
    p = Path(path).expanduser()
    base = p if p.is_absolute() else Path.cwd() / p
    if base.is_file():
        return [base]
    if base.is_dir():
        return sorted(f for f in base.rglob("*") if f.is_file())
    return sorted(Path(f) for f in globlib.glob(str(base), recursive=True) if Path(f).is_file())


def _files_hash(files: list[Path]) -> str:
    return hash_text(canonical_json([[f.name, file_hash(f)] for f in files]))


def _text_prepare(params: dict) -> dict:
    _check_sizes(params)
    files = text_files(params["path"])
    if not files:
        raise CorpusError(f"no files match {params['path']!r}", "path", "a file, a directory or a glob such as data/*.txt")
    return {**params, "content_hash": _files_hash(files)}


def text_documents(files: list[Path], unit: str) -> Iterator[str]:
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        if unit == "file":
            parts = [text]
        elif unit == "line":
            parts = text.splitlines()
        else:
            parts = text.split("\n\n")
        for part in parts:
            part = part.strip()
            if part:
                yield part


@spec.corpus(
    "text",
    version=1,
    params=[
        Param("path", str, doc="a UTF-8 text file, a directory, or a glob (data/*.txt); read from the current directory"),
        *common_params(),
        Param("unit", str, "paragraph", choices=UNITS, doc="what one document is: a paragraph, a line or a file"),
    ],
    needs_model=True,
    prepare=_text_prepare,
    doc="Text files packed into rows of `context` tokens.",
    example='corpus notes = text "README.md" tokens=512 context=64',
)
def run_text(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """Text files, tokenised by the reading model and packed into rows."""
    files = text_files(params["path"])
    if params.get("content_hash") and _files_hash(files) != params["content_hash"]:
        raise CorpusError(f"the files of {params['path']!r} changed since the study was checked; run it again")
    tok = tokenizer_of(inputs["model"], ctx)
    packed = pack(text_documents(files, params["unit"]), tok, params["context"], params["tokens"])
    return _artifact(packed, {"source": "text", "path": params["path"], "files": [f.name for f in files]})


# ---- parquet ------------------------------------------------------------------------------


def _parquet_prepare(params: dict) -> dict:
    import polars as pl

    _check_sizes(params)
    files = text_files(params["path"])
    if len(files) != 1:
        raise CorpusError(f"{params['path']!r} is not one parquet file", "path")
    try:
        schema = pl.read_parquet_schema(files[0])
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise CorpusError(f"cannot read {params['path']!r} as parquet: {type(e).__name__}", "path") from None
    if params["column"] not in schema:
        from mechstudy.engine.spec import suggest

        near = suggest(params["column"], list(schema))
        raise CorpusError(f"{params['path']} has no column {params['column']!r}", "column",
                          f"did you mean {near!r}?" if near else f"its columns: {', '.join(schema)}")
    return {**params, "content_hash": file_hash(files[0])}


@spec.corpus(
    "parquet",
    version=1,
    params=[
        Param("path", str, doc="a parquet file; read from the current directory"),
        *common_params(),
        Param("column", str, "text", doc="the column holding the text, one document per row"),
    ],
    needs_model=True,
    prepare=_parquet_prepare,
    doc="A parquet column of documents packed into rows of `context` tokens.",
    example='corpus stories = parquet "studies/data/stories.parquet" column=text tokens=512 context=64',
)
def run_parquet(inputs: dict, params: dict, ctx: Any) -> Artifact:
    """A parquet column, tokenised by the reading model and packed into rows."""
    import polars as pl

    (f,) = text_files(params["path"])
    if params.get("content_hash") and file_hash(f) != params["content_hash"]:
        raise CorpusError(f"{params['path']!r} changed since the study was checked; run it again")
    docs = (str(x) for x in pl.scan_parquet(f).select(params["column"]).collect().get_column(params["column"])
            if x is not None and str(x).strip())
    packed = pack(docs, tokenizer_of(inputs["model"], ctx), params["context"], params["tokens"])
    return _artifact(packed, {"source": "parquet", "path": params["path"], "column": params["column"]})
