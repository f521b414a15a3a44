"""The `study` command.

    study run STUDY [--cache DIR] [--device cpu|cuda] [--workers N | --scheduler tcp://H:P] [--quiet | --json]
    study check STUDY...         errors as file:line:col with a caret, nothing computed
    study explain STUDY          the plan as stable text, cached/missing per node
    study why STUDY NAME         why NAME will (or won't) come from the cache
    study show STUDY NAME [--format table|csv|json]
    study export STUDY NAME [--format png|svg|pdf]   a result's charts as image files
    study ops                    the operator reference, generated from the specs
    study datasets               the dataset generators, their options and examples
    study models                 the zoo
    study fmt FILE... [--check]  the canonical layout of study files, comments kept
    study new [TECHNIQUE]        a commented starter study that runs on the zoo's mini
    study pack | unpack | verify sharing: see engine/pack.py

`study VERB --help` describes each verb. A mistake in a study file prints our error and exits 1;
it never shows a Python traceback. Exit codes: see EXIT_CODES.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Sequence


# What `study` exits with (also printed by `study --help`).
EXIT_CODES = {
    0: "success (for `fmt --check`: every file is already formatted)",
    1: "an error in a study (file:line:col), a failing operator, a result not computed yet, a "
       "verification that differs, or `fmt --check` found a file to reformat",
    2: "the command line itself is wrong (unknown verb or option)",
    130: "interrupted (Ctrl-C or SIGTERM); the cache is consistent and a rerun resumes",
}


def _epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {k:<4} {v}" for k, v in EXIT_CODES.items())


def _cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", default=None, help="store directory (default: $MECHSTUDY_CACHE, then ./cache)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="study", description="Declarative, cached interpretability studies.",
                                 epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run a study: compute what is missing, write the report and lock")
    p.add_argument("study")
    _cache_arg(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--workers", type=int, default=None, help="run on a dask.distributed LocalCluster of N processes")
    p.add_argument("--scheduler", default=None, help="address of a dask.distributed scheduler (tcp://HOST:PORT)")
    p.add_argument("--max-rows", type=int, default=32, help="rows per batched forward (tune per device)")
    p.add_argument("--out", default=None, help="report directory (default out/<study>)")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks of failing operators")
    p.add_argument("--from", dest="from_pack", default=None, help="import this pack's results first")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--quiet", "-q", action="store_true", help="print nothing but warnings and errors")
    shown.add_argument("--json", action="store_true",
                       help="print one JSON event per line (start, node, progress, warning, finish) and nothing else")
    p = sub.add_parser("check", help="check studies without computing anything")
    p.add_argument("study", nargs="+")
    p = sub.add_parser("explain", help="print the plan")
    p.add_argument("study")
    _cache_arg(p)
    p.add_argument("--no-keys", action="store_true", help="omit keys and cache status (stable across machines)")
    p = sub.add_parser("why", help="why a result will be recomputed")
    p.add_argument("study")
    p.add_argument("name")
    _cache_arg(p)
    p = sub.add_parser("show", help="print a result's table from the cache")
    p.add_argument("study")
    p.add_argument("name")
    _cache_arg(p)
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p = sub.add_parser("pack", help="bundle a study, its lock and its cached results into a zip")
    p.add_argument("study")
    _cache_arg(p)
    p.add_argument("-o", "--output", default=None)
    p.add_argument("--all", action="store_true", help="every node, not only results and charts")
    p = sub.add_parser("unpack", help="import a pack's results into the store")
    p.add_argument("pack")
    _cache_arg(p)
    p.add_argument("--dir", default=".", help="where to put the study file")
    p = sub.add_parser("verify", help="recompute a study's results from scratch and compare")
    p.add_argument("study")
    _cache_arg(p)
    p.add_argument("--from", dest="from_pack", default=None, help="verify the results in this pack")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol", type=float, default=1e-5)
    p = sub.add_parser("export", help="save a result's charts as PNG or SVG files")
    p.add_argument("study")
    p.add_argument("name")
    _cache_arg(p)
    p.add_argument("--format", choices=["png", "svg", "pdf"], default="png")
    p.add_argument("-o", "--out", default=None, help="directory (default out/<study>)")
    p.add_argument("--scale", type=float, default=2.0, help="PNG pixels per chart pixel")
    sub.add_parser("ops", help="the operator reference", description="Every operator (statement verb): "
                   "its components, options with defaults, and an example; generated from the specs.")
    sub.add_parser("datasets", help="the dataset generators", description="Every dataset generator: what it "
                   "makes, its options with defaults, and an example; generated from the specs.")
    sub.add_parser("models", help="the zoo: embedded models and their measured behaviours")
    p = sub.add_parser("fmt", help="format study files (canonical layout, comments kept)",
                       description="Rewrite study files in the canonical layout (spacing, aligned `=` and "
                       "trailing comments); only whitespace changes. A file with a syntax error is reported "
                       "and left alone.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would be reformatted")
    p.add_argument("--diff", action="store_true", help="print what would change, change nothing")
    from mechstudy.engine.starters import DEFAULT, STARTERS

    p = sub.add_parser("new", help="print (or write) a commented starter study",
                       description="A commented starter study that runs on the zoo's mini as written. "
                       "Techniques: " + ", ".join(STARTERS) + f" (default {DEFAULT}).")
    p.add_argument("technique", nargs="?", default=DEFAULT, choices=sorted(STARTERS), metavar="TECHNIQUE",
                   help="one of " + ", ".join(sorted(STARTERS)))
    p.add_argument("-o", "--output", default=None, help="write it to this file (refuses to overwrite one)")
    for name, sp in sub.choices.items():  # every verb's --help has a description
        if not sp.description:
            sp.description = next(a.help for a in sub._choices_actions if a.dest == name)
        sp.epilog = "exit codes: 0 success, 1 error (see the message), 2 bad command line, 130 interrupted"
    return ap


def _quiet_libraries() -> None:
    """Library progress bars ("Loading weights ...") would drown our one-line summary."""
    import os

    # transformers reads this when it is first imported (lazily, inside the model loader), so
    # setting it here is enough and keeps `study check` from importing transformers at all.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries()
    from mechstudy.lang.errors import StudyErrors

    try:
        return _dispatch(args)
    except StudyErrors as e:
        print(e.render(), file=sys.stderr)
        n = len(e.errors)
        print(f"{n} error{'s' if n != 1 else ''}; nothing was computed", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"error: {e.filename or e}: no such file", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; the cache is consistent and a rerun resumes where this one stopped", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from mechstudy.engine import run as runmod
    from mechstudy.engine.store import Store

    if args.cmd == "check":
        from mechstudy.lang import check_file
        from mechstudy.lang.errors import StudyErrors

        runmod.load_stdlib()
        bad = 0
        for path in args.study:
            try:
                check_file(path)
                print(f"{path}: ok")
            except StudyErrors as e:
                print(e.render(), file=sys.stderr)
                bad += len(e.errors)
        if bad:
            print(f"{bad} error{'s' if bad != 1 else ''}", file=sys.stderr)
        return 1 if bad else 0

    if args.cmd == "run":
        return _run(args)

    if args.cmd == "explain":
        from mechstudy.engine.explain import explain

        plan = runmod.check_and_plan(args.study)
        print(explain(plan, None if args.no_keys else Store(args.cache), keys=not args.no_keys), end="")
        return 0

    if args.cmd == "why":
        from mechstudy.engine.explain import why

        plan = runmod.check_and_plan(args.study)
        print(why(plan, args.name, runmod.read_lock(Path(args.study + ".lock")), Store(args.cache)))
        return 0

    if args.cmd == "show":
        return _show(args)

    if args.cmd == "export":
        return _export(args)

    if args.cmd in ("pack", "unpack", "verify"):
        return _pack_cmds(args)

    if args.cmd == "ops":
        from mechstudy.engine.docs import ops_reference

        runmod.load_stdlib()
        print(ops_reference())
        return 0

    if args.cmd == "datasets":
        from mechstudy.engine.docs import datasets_reference

        runmod.load_stdlib()
        print(datasets_reference())
        return 0

    if args.cmd == "fmt":
        return _fmt(args)

    if args.cmd == "new":
        return _new(args)

    if args.cmd == "models":
        from mechstudy.engine.docs import models_listing

        runmod.load_stdlib()
        print(models_listing())
        return 0
    return 2


def _run(args: argparse.Namespace) -> int:
    from mechstudy.engine.graph import OpFailed
    from mechstudy.engine.run import run_study

    if args.from_pack:
        from mechstudy.engine.pack import unpack
        from mechstudy.engine.store import Store

        u = unpack(args.from_pack, Store(args.cache), Path(args.study).parent)
        print(f"unpacked {u.imported} entries ({u.already} already present)")
    scheduler = args.scheduler or (f"local:{args.workers}" if args.workers else None)
    device = None if args.device == "auto" else args.device
    # SIGTERM behaves like Ctrl-C: entries are written by rename, so stopping is always safe.
    def _on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_term)
    from mechstudy.engine.progress import display_for

    try:
        with display_for("json" if args.json else "quiet" if args.quiet else "auto") as show:
            res = run_study(
                args.study,
                cache=args.cache,
                device=device,
                scheduler=scheduler,
                max_rows=args.max_rows,
                out_dir=args.out,
                events=show,
            )
    except OpFailed as e:
        print(f"error: operator {e.node.op} failed ({e.node.dask_key}): {e}", file=sys.stderr)
        if args.debug:
            print(e.tb, file=sys.stderr)
        else:
            print("  (rerun with --debug for the traceback; finished nodes are cached)", file=sys.stderr)
        return 1
    if args.json or args.quiet:
        return 0  # --json: the finish event has the summary and the report's path
    if res.report:
        print(f"report: {res.report}")
    print(res.summary())
    return 0


def _pack_cmds(args: argparse.Namespace) -> int:
    from mechstudy.engine import pack as packmod
    from mechstudy.engine.store import Store

    store = Store(args.cache)
    try:
        if args.cmd == "pack":
            out = args.output or (Path(args.study).stem + ".studypack.zip")
            path, n = packmod.pack(args.study, store, out, everything=args.all)
            print(f"packed {n} entries into {path} ({path.stat().st_size / 1e6:.2f} MB)")
            return 0
        if args.cmd == "unpack":
            u = packmod.unpack(args.pack, store, args.dir)
            print(f"unpacked {u.imported} entries ({u.already} already present); study: {u.study}")
            return 0
        if args.from_pack:
            import tempfile

            tmp = Path(tempfile.mkdtemp(prefix="verify-pack-"))
            store = Store(tmp / "cache")
            packmod.unpack(args.from_pack, store, tmp)
        lines = packmod.verify(args.study, store, rtol=args.rtol, atol=args.atol)
    except packmod.PackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    bad = [ln for ln in lines if not ln.startswith("ok ")]
    print(f"{len(lines) - len(bad)} ok, {len(bad)} differ or missing")
    return 1 if bad else 0


def _fmt(args: argparse.Namespace) -> int:
    import difflib

    from mechstudy.engine.fmt import format_text
    from mechstudy.lang.errors import StudyErrors

    bad = changed = 0
    for name in args.files:
        text = Path(name).read_text(encoding="utf-8")
        try:
            new = format_text(text, name)
        except StudyErrors as e:
            print(e.render(), file=sys.stderr)
            bad += 1
            continue
        if new == text:
            continue
        changed += 1
        if args.diff:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), name, name))
        elif args.check:
            print(f"{name}: would be reformatted")
        else:
            Path(name).write_text(new, encoding="utf-8")
            print(f"{name}: reformatted")
    if args.check or args.diff:
        n = len(args.files) - bad
        print(f"{changed} of {n} file{'s' if n != 1 else ''} would be reformatted", file=sys.stderr)
        return 1 if changed or bad else 0
    return 1 if bad else 0


def _new(args: argparse.Namespace) -> int:
    from mechstudy.engine.starters import starter

    if args.output is None:
        sys.stdout.write(starter(args.technique))
        return 0
    out = Path(args.output)
    if out.exists():
        print(f"error: {out} exists; choose another name (study new never overwrites)", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(starter(args.technique, str(out)), encoding="utf-8")
    print(f"wrote {out}; run it with: study run {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from mechstudy.engine import run as runmod
    from mechstudy.engine.report import export_chart
    from mechstudy.engine.results import gather
    from mechstudy.engine.spec import suggest
    from mechstudy.engine.store import Store

    plan = runmod.check_and_plan(args.study)
    if args.name not in plan.results:
        hint = suggest(args.name, plan.results)
        print(f"error: no result named {args.name!r}" + (f"; did you mean {hint!r}?" if hint else ""), file=sys.stderr)
        return 1
    store = Store(args.cache)
    points = [p for p in gather(plan, store) if p.name == args.name] if _computed(plan, store, args.name) else []
    if not points:
        print(f"error: {args.name} is not computed yet; run `study run {args.study}` first", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path("out") / Path(args.study).stem
    written = 0
    for p in points:
        charts = p.charts()
        if not charts:
            print(f"{p.label}: no chart (add `plot {args.name} as heatmap`, or see `study show`)", file=sys.stderr)
        for i, spec in enumerate(charts):
            stem = p.label.replace(" [", "-").replace("]", "").replace(", ", "-")
            path = out / f"{stem}{'' if i == 0 else f'-{i + 1}'}.{args.format}"
            export_chart(spec, path, scale=args.scale)
            print(path)
            written += 1
    return 0 if written else 1


def _computed(plan, store, name: str) -> bool:  # noqa: ANN001
    res = plan.results[name]
    return all(store.has(n.key) for n in res.nodes) and all(store.has(c.key) for c in res.charts)


def _show(args: argparse.Namespace) -> int:
    from mechstudy.engine import run as runmod
    from mechstudy.engine.results import main_table
    from mechstudy.engine.spec import suggest
    from mechstudy.engine.store import Store

    plan = runmod.check_and_plan(args.study)
    if args.name not in plan.results:
        hint = suggest(args.name, plan.results)
        print(f"error: no result named {args.name!r}" + (f"; did you mean {hint!r}?" if hint else ""), file=sys.stderr)
        return 1
    store = Store(args.cache)
    import polars as pl

    frames = []
    for i, n in enumerate(plan.results[args.name].nodes):
        if not store.has(n.key):
            print(f"error: {args.name} is not computed yet; run `study run {args.study}` first", file=sys.stderr)
            return 1
        t = main_table(store.get(n.key))
        if t is None:
            print(f"error: {args.name} has no table", file=sys.stderr)
            return 1
        point = plan.results[args.name].points[i]
        for k in plan.results[args.name].call.sweep:
            t = t.with_columns(pl.lit(point[k]).alias(k))
        frames.append(t)
    df = pl.concat(frames, how="diagonal") if len(frames) > 1 else frames[0]
    if args.format == "csv":
        sys.stdout.write(df.write_csv())
    elif args.format == "json":
        sys.stdout.write(df.write_json() + "\n")
    else:
        _print_headline(plan, store, args.name)
        with pl.Config(tbl_rows=max(len(df), 10), tbl_cols=-1):
            print(df)
    return 0


def _print_headline(plan, store, name: str) -> None:  # noqa: ANN001
    """The headline numbers the report shows beside the chart, before the table."""
    from mechstudy.engine.results import gather

    for p in (p for p in gather(plan, store) if p.name == name):
        lines = p.headline()
        if p.empty():
            print(f"{p.label}: empty: {p.empty()}")
        if not lines:
            continue
        print(p.label)
        for h in lines:
            value = h.value.replace("\n", ", ")
            print(f"  {h.label}: {value}" + (f"  ({h.detail})" if h.detail else ""))
    print()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
