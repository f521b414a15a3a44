"""Train the zoo recipes and write the shipped Hugging Face directories (what `make zoo` runs).

    python -m mechstudy.stdlib.zoo.build [attn2|mini|all] [--steps N] [--seed S] [--out DIR] [--cards-only]
    python -m mechstudy.stdlib.zoo.build mini --remeasure   # per-split behaviours of the shipped weights
    python -m mechstudy.stdlib.zoo.build small --describe   # its circuits, by studies/circuits/small.study

Each model is trained by `train_artifact` (the function a study's ``train model using NAME``
runs through the `train_model` operator), measured on its held-out sets, and written as
``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``,
``behaviours.json`` and a model card ``README.md``. The operator imports this module, never the
other way round. A text model's ``splits.json`` (which dataset split it never saw, and what it did
see) is hand-written, kept with the shipped directory and copied into a new one; its per-split
behaviours (`measure.measure_splits`) are measured after training and by ``--remeasure``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from mechstudy.engine.spec import Artifact
from mechstudy.stdlib.zoo import MODELS_DIR, ZOO_NAMES, card, measure as M, vocab
from mechstudy.stdlib.zoo.describe import describe
from mechstudy.stdlib.zoo.train import Trained

DESCRIBED = ("small",)  # zoo models whose circuits a study of studies/circuits/ describes after the build


def measure(trained: Trained) -> dict:
    """The behaviours of a freshly trained model on its recipe's held-out sets."""
    with torch.no_grad():
        if trained.name == "attn2":
            return M.measure_attn2(trained.model)
        if trained.name == "small":
            return M.measure_small(trained.model, trained.tokenizer)
        return M.measure_mini(trained.model, trained.tokenizer)


def to_artifact(trained: Trained, behaviours: dict) -> Artifact:
    """tensors: the state dict (own storage each, so tied weights save); data: the rest of the directory."""
    state = {k: v.detach().clone().contiguous() for k, v in trained.model.state_dict().items()}
    return Artifact(
        tensors=state,
        data={
            "name": trained.name,
            "config": trained.model.config.to_dict(),
            "tokenizer": json.loads(trained.tokenizer.to_str()),
            "model_max_length": trained.model_max_length,
            "info": trained.info,
            "behaviours": behaviours,
        },
    )


def train_artifact(method: str, steps: int | None = None, seed: int = 0, lr: float | None = None,
                   threads: int = 1, measure_it: bool = True, log: Any = None) -> Artifact:
    """Train recipe `method` (and measure it): what `train model using METHOD` and `make zoo` both run."""
    from mechstudy.stdlib.zoo import train

    kwargs = {k: v for k, v in dict(steps=steps, seed=seed, lr=lr, threads=threads).items() if v is not None}
    trained = train.RECIPES[method](log=log or (lambda msg: None), **kwargs)
    return to_artifact(trained, measure(trained) if measure_it else {})


def from_artifact(art: Artifact) -> tuple[Any, Tokenizer]:
    """The (HF model in eval mode, tokenizer) a `train_model` artifact holds."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_dict = dict(art.data["config"])
    cfg = AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    model.load_state_dict(dict(art.tensors))
    model.eval()
    return model, Tokenizer.from_str(json.dumps(art.data["tokenizer"]))


def write_model_dir(art: Artifact, directory: Path) -> Path:
    """Write a `train_model` artifact as a Hugging Face directory with its card and behaviours."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model, tok = from_artifact(art)
    model.save_pretrained(directory, safe_serialization=True)
    vocab.save_hf(tok, directory, art.data["model_max_length"])
    (directory / "generation_config.json").unlink(missing_ok=True)  # nothing to generate with
    n_params = sum(p.numel() for p in model.parameters())
    summary = {"name": art.data["name"], "parameters": n_params, "info": art.data["info"],
               "behaviours": art.data["behaviours"]}
    (directory / "behaviours.json").write_text(json.dumps(summary, indent=1) + "\n")
    shipped = MODELS_DIR / art.data["name"] / "splits.json"
    if shipped.is_file() and shipped.resolve() != (directory / "splits.json").resolve():
        shutil.copyfile(shipped, directory / "splits.json")
    if (directory / "splits.json").is_file() and art.data["behaviours"]:
        M.remeasure_splits(directory)
        summary = json.loads((directory / "behaviours.json").read_text())
    (directory / "README.md").write_text(card.render(summary, model.config))
    return directory


def rewrite_card(directory: Path) -> None:
    """Re-render README.md from a shipped directory's behaviours.json and config (no training)."""
    from transformers import AutoConfig

    directory = Path(directory)
    summary = json.loads((directory / "behaviours.json").read_text())
    (directory / "README.md").write_text(card.render(summary, AutoConfig.from_pretrained(directory)))


def build(name: str, out: Path = MODELS_DIR, **params: Any) -> Path:
    """Train zoo model `name` by `train_artifact` and write `out/name/`."""
    t0 = time.perf_counter()
    art = train_artifact(name, **{k: v for k, v in params.items() if v is not None},
                         log=lambda msg: print(f"[{name}] {msg}", flush=True))
    path = write_model_dir(art, Path(out) / name)
    print(f"[{name}] wrote {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mechstudy.stdlib.zoo.build", description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="?", default="all", choices=[*ZOO_NAMES, "all"])
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's steps (for trials)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", type=Path, default=MODELS_DIR, help="parent directory to write into")
    ap.add_argument("--cards-only", action="store_true", help="only re-render README.md from behaviours.json")
    ap.add_argument("--describe", action="store_true",
                    help="run studies/circuits/NAME.study on the shipped weights, store its findings, re-render README.md")
    ap.add_argument("--remeasure", action="store_true",
                    help="measure the shipped weights on each dataset split (behaviours.json per_split), re-render README.md")
    args = ap.parse_args(argv)
    for name in ZOO_NAMES if args.which == "all" else (args.which,):
        if args.describe:
            if name in DESCRIBED:
                describe(name, Path(args.out) / name)
                rewrite_card(Path(args.out) / name)
        elif args.remeasure:
            if (Path(args.out) / name / "splits.json").is_file():
                M.remeasure_splits(Path(args.out) / name)
            rewrite_card(Path(args.out) / name)
        elif args.cards_only:
            rewrite_card(Path(args.out) / name)
        else:
            build(name, args.out, steps=args.steps, seed=args.seed)
            if name in DESCRIBED and args.steps is None and args.seed is None and Path(args.out).resolve() == MODELS_DIR.resolve():
                describe(name, Path(args.out) / name)
                rewrite_card(Path(args.out) / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
