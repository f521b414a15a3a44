"""The `study` command.

    study run STUDY [--cache DIR] [--device cpu|cuda] [--workers N | --scheduler tcp://H:P] [--quiet | --json]
              [--from PACK [--trust]]
    study check STUDY...         errors as file:line:col with a caret, nothing computed
    study explain STUDY          the plan as stable text, cached/missing/imported/damaged per node
    study why STUDY NAME         why NAME will (or won't) come from the cache
    study show STUDY NAME [--format table|csv|json]
    study export STUDY NAME [--format png|svg|pdf]   a result's charts as image files
    study ops                    the operator reference, generated from the specs
    study datasets               the dataset generators, their options and examples
    study models                 the zoo
    study fmt FILE... [--check]  the canonical layout of study files, comments kept
    study new [TECHNIQUE]        a commented starter study that runs on the zoo's mini
    study pack | unpack | verify sharing: see engine/pack.py
    study cache ls|du|gc|verify  what the store holds: see engine/cachetools.py

`study VERB --help` describes each verb. No verb prints a Python traceback: every failure is one `error: ...` line (or the study's own
`file:line:col: error:` lines) and an exit code from `EXIT_CODES`; `--debug` shows the traceback
of an unexpected failure. Ctrl-C and SIGTERM stop a run within seconds (exit 130); nothing
half-computed is ever committed, and a rerun resumes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

OK, STUDY_ERRORS, USAGE, OP_FAILED, REFUSED, DIFFERS, UNAVAILABLE, INTERNAL, INTERRUPTED = 0, 1, 2, 3, 4, 5, 6, 70, 130
EXIT_CODES = {
    OK: "success (for `fmt --check`: every file is already formatted)",
    STUDY_ERRORS: "the study has errors (file:line:col: error: ...) and nothing was computed; or `fmt --check` "
                  "found a file to reformat",
    USAGE: "the command line is wrong (unknown verb or option)",
    OP_FAILED: "an operator failed while running; the nodes that finished stay cached",
    REFUSED: "an input was refused: a pack (forged, oversized, malformed, escaping) or an unreadable file",
    DIFFERS: "`verify`: results differ or are missing; `cache verify`: damaged entries",
    UNAVAILABLE: "`show`: the result is not computed yet, or its cache entry is damaged",
    INTERNAL: "an unexpected internal error (a bug): one line here, the traceback with --debug",
    INTERRUPTED: "interrupted (Ctrl-C or SIGTERM); nothing half-written, a rerun resumes",
}
_EPILOG = "exit codes:\n" + "\n".join(f"  {code:<4} {what}" for code, what in EXIT_CODES.items())


class _Refused(Exception):
    """An input the user gave cannot be used (exit REFUSED); the message is one line."""


def _cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", default=None, help="store directory, or object storage: s3://bucket/prefix "
                   "(default: $MECHSTUDY_CACHE, then ./cache)")


def _pack_limit_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-bytes", type=int, default=None,
                   help="largest uncompressed pack to accept (default 8 GB, or $MECHSTUDY_PACK_MAX_BYTES)")
    p.add_argument("--trust", action="store_true",
                   help="trust the pack wholesale: its results serve every study, as if computed here")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the Python traceback of an unexpected failure")
    common.add_argument("--no-ceilings", action="store_true",
                        help="allow sizes over the parameters' sane ceilings (also MECHSTUDY_NO_CEILINGS=1)")
    fmt = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(prog="study", description="Declarative, cached interpretability studies.",
                                 epilog=_EPILOG, formatter_class=fmt, parents=[common])
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="VERB")

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common], epilog=_EPILOG, formatter_class=fmt)

    p = verb("run", "run a study: compute what is missing, write the report and lock")
    p.add_argument("study")
    _cache_arg(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--workers", type=int, default=None, help="run on a dask.distributed LocalCluster of N processes")
    p.add_argument("--scheduler", default=None, help="address of a dask.distributed scheduler (tcp://HOST:PORT)")
    p.add_argument("--max-rows", type=int, default=None,
                   help="sequences per batched forward (default: by device, 64 on a CPU, 1024 on a GPU)")
    p.add_argument("--out", default=None, help="report directory (default out/<study>)")
    p.add_argument("--from", dest="from_pack", default=None,
                   help="import this pack first; its results serve its own study (STUDY, extracted if absent)")
    _pack_limit_arg(p)
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--quiet", "-q", action="store_true", help="print nothing but warnings and errors")
    shown.add_argument("--json", action="store_true",
                       help="print one JSON event per line (start, node, progress, warning, finish) and nothing else")
    p = verb("check", "check studies without computing anything")
    p.add_argument("study", nargs="+")
    p = verb("explain", "print the plan, with each node's cache status")
    p.add_argument("study")
    _cache_arg(p)
    p.add_argument("--no-keys", action="store_true", help="omit keys and cache status (stable across machines)")
    p = verb("why", "why a result will be recomputed")
    p.add_argument("study")
    p.add_argument("name")
    _cache_arg(p)
    p = verb("show", "print a result's table from the cache")
    p.add_argument("study")
    p.add_argument("name")
    _cache_arg(p)
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p = verb("pack", "bundle a study, its lock, the files it reads and its cached results into a zip")
    p.add_argument("study")
    _cache_arg(p)
    p.add_argument("-o", "--output", default=None)
    p.add_argument("--all", action="store_true", help="every node, not only results and charts")
    p = verb("unpack", "import a pack's results (kept apart unless --trust) and extract its study")
    p.add_argument("pack")
    _cache_arg(p)
    p.add_argument("--dir", default=".", help="where to put the study file")
    _pack_limit_arg(p)
    p = verb("verify", "recompute a study's results here, compare, and keep what was recomputed")
    p.add_argument("study")
    _cache_arg(p)
    p.add_argument("--from", dest="from_pack", default=None, help="import this pack first and verify its results")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.add_argument("--max-bytes", type=int, default=None, help="largest uncompressed pack to accept")
    p = verb("export", "save a result's charts as PNG or SVG files")
    p.add_argument("study")
    p.add_argument("name")
    _cache_arg(p)
    p.add_argument("--format", choices=["png", "svg", "pdf"], default="png")
    p.add_argument("-o", "--out", default=None, help="directory (default out/<study>)")
    p.add_argument("--scale", type=float, default=2.0, help="PNG pixels per chart pixel")
    verb("ops", "the operator reference").description = (
        "Every operator (statement verb): its components, options with defaults, and an example; generated from the specs.")
    verb("datasets", "the dataset generators").description = (
        "Every dataset generator: what it makes, its options with defaults, and an example; generated from the specs.")
    verb("models", "the zoo: embedded models and their measured behaviours")
    p = verb("fmt", "format study files (canonical layout, comments kept)")
    p.description = ("Rewrite study files in the canonical layout (spacing, aligned `=` and trailing comments); only "
                     "whitespace changes. A file with a syntax error is reported and left alone.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would be reformatted")
    p.add_argument("--diff", action="store_true", help="print what would change, change nothing")
    from mechstudy.engine.starters import DEFAULT, STARTERS

    p = verb("new", "print (or write) a commented starter study")
    p.description = ("A commented starter study that runs on the zoo's mini as written. Techniques: "
                     + ", ".join(STARTERS) + f" (default {DEFAULT}).")
    p.add_argument("technique", nargs="?", default=DEFAULT, choices=sorted(STARTERS), metavar="TECHNIQUE",
                   help="one of " + ", ".join(sorted(STARTERS)))
    p.add_argument("-o", "--output", default=None, help="write it to this file (refuses to overwrite one)")
    p = verb("cache", "inspect and clean the store: ls, du, gc, verify")
    csub = p.add_subparsers(dest="cache_cmd", required=True, metavar="ACTION")
    for name, text in (("ls", "every entry: op, size, last use, where from, which studies use it"),
                       ("du", "disk use by op and by imported pack"),
                       ("gc", "remove entries no kept study uses (and stale temp dirs)"),
                       ("verify", "recheck every entry's sizes and checksums")):
        c = csub.add_parser(name, help=text, description=text, parents=[common], epilog=_EPILOG, formatter_class=fmt)
        _cache_arg(c)
        if name == "gc":
            c.add_argument("--keep", nargs="+", metavar="STUDY", default=None,
                           help="keep only what these studies use (default: every study whose lock file exists)")
            c.add_argument("--older-than", type=float, default=0.0, metavar="DAYS",
                           help="remove only entries last used more than DAYS ago")
            c.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
        if name == "verify":
            c.add_argument("--remove", action="store_true", help="remove damaged entries (they are recomputed when needed)")
    return ap


def _quiet_libraries() -> None:
    """Library progress bars ("Loading weights ...") would drown our one-line summary."""
    # transformers reads this when it is first imported (lazily, inside the model loader), so
    # setting it here is enough and keeps `study check` from importing transformers at all.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def _stop_on_signals(hard_exit: bool) -> Iterator[None]:
    """Ctrl-C and SIGTERM: ask every running node to stop (engine/progress.py), and leave the main
    thread's wait at once. A second signal, or a node that does not stop within a few seconds when
    we exit the process, ends it anyway: entries are written by rename, so that is always safe."""
    from mechstudy.engine import nodeprogress

    def handler(signum: int, frame: Any) -> None:
        if nodeprogress.stop_requested() and hard_exit:
            os._exit(INTERRUPTED)
        nodeprogress.request_stop()
        raise KeyboardInterrupt

    try:
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        old = {}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def _ceilings(lifted: bool) -> Iterator[None]:
    """--no-ceilings: sizes over a parameter's `ceiling` are allowed for this command (the checker
    and every worker read MECHSTUDY_NO_CEILINGS)."""
    if not lifted:
        yield
        return
    before = os.environ.get("MECHSTUDY_NO_CEILINGS")
    os.environ["MECHSTUDY_NO_CEILINGS"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MECHSTUDY_NO_CEILINGS", None)
        else:
            os.environ["MECHSTUDY_NO_CEILINGS"] = before


def main(argv: Sequence[str] | None = None, *, hard_exit: bool | None = None) -> int:
    """Run one verb; returns its exit code. `hard_exit` (default: when called as the `study`
    program, argv None) ends the process at once after an interruption, without waiting for
    operator threads that do not call `ctx.progress`."""
    hard_exit = argv is None if hard_exit is None else hard_exit
    args = _parser().parse_args(argv)  # --help exits 0, a usage error 2 (argparse's SystemExit)
    _quiet_libraries()
    code = INTERNAL
    try:
        with _stop_on_signals(hard_exit), _ceilings(getattr(args, "no_ceilings", False)):
            code = _dispatch(args)
    except _exc("StudyErrors") as e:
        print(e.render(), file=sys.stderr)
        n = len(e.errors)
        print(f"{n} error{'s' if n != 1 else ''}; nothing was computed", file=sys.stderr)
        code = STUDY_ERRORS
    except (_exc("PackError"), _exc("StoreURLError"), _Refused) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        code = REFUSED
    except (KeyboardInterrupt, _exc("Interrupted")):
        print("\ninterrupted; nothing half-computed was kept, and a rerun resumes where this one stopped", file=sys.stderr)
        code = INTERRUPTED
    except FileNotFoundError as e:
        print(f"error: {e.filename or _one_line(e)}: no such file", file=sys.stderr)
        code = REFUSED
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or _one_line(e)}", file=sys.stderr)
        code = REFUSED
    except RecursionError:
        print("error: the input is nested too deeply to read", file=sys.stderr)
        code = REFUSED
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
        code = INTERNAL
    except Exception as e:  # noqa: BLE001 - the promise: never a traceback unless asked for
        print(f"error: internal error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        if getattr(args, "debug", False):
            traceback.print_exc()
        else:
            print("  (this is a bug in mechstudy; rerun with --debug for the traceback)", file=sys.stderr)
        code = INTERNAL
    if code == INTERRUPTED and hard_exit:
        # Operator threads that do not call ctx.progress would hold the interpreter's exit until
        # they finish (and they would not be committed anyway): leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED)
    return code


def _exc(name: str) -> type:
    """An exception class main() catches, imported only when an exception is being matched (an
    `except` clause evaluates its classes then): a warm `study run` never imports the language's
    parser or the pack machinery it does not use."""
    if name == "StudyErrors":
        from mechstudy.lang.errors import StudyErrors as cls
    elif name == "PackError":
        from mechstudy.engine.pack import PackError as cls
    elif name == "StoreURLError":
        from mechstudy.engine.objectstore import StoreURLError as cls
    else:
        from mechstudy.engine.nodeprogress import Interrupted as cls
    return cls


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd != "run":
        from mechstudy.engine import run as runmod

    if args.cmd == "check":
        from mechstudy.engine.confine import check_study_paths, for_study
        from mechstudy.lang import check_file
        from mechstudy.lang.errors import StudyErrors

        runmod.load_stdlib()
        bad = 0
        for path in args.study:
            try:
                with for_study(path):
                    check_study_paths(path)
                    check_file(path)
                print(f"{path}: ok")
            except StudyErrors as e:
                print(e.render(), file=sys.stderr)
                bad += len(e.errors)
        if bad:
            print(f"{bad} error{'s' if bad != 1 else ''}", file=sys.stderr)
        return STUDY_ERRORS if bad else OK

    if args.cmd == "run":
        return _run(args)

    if args.cmd == "explain":
        from mechstudy.engine.explain import explain

        if args.no_keys:
            with _opened(args.study, None) as (plan, _):
                print(explain(plan, None, keys=False), end="")
            return OK
        with _opened(args.study, args.cache) as (plan, store):
            print(explain(plan, store, keys=True), end="")
        return OK

    if args.cmd == "why":
        from mechstudy.engine.explain import why

        with _opened(args.study, args.cache) as (plan, store):
            print(why(plan, args.name, runmod.read_lock(Path(args.study + ".lock")), store))
        return OK

    if args.cmd == "show":
        return _show(args)

    if args.cmd in ("pack", "unpack", "verify"):
        return _pack_cmds(args)

    if args.cmd == "cache":
        return _cache_cmds(args)

    if args.cmd == "export":
        return _export(args)

    if args.cmd == "fmt":
        return _fmt(args)

    if args.cmd == "new":
        return _new(args)

    if args.cmd == "datasets":
        from mechstudy.engine.docs import datasets_reference

        runmod.load_stdlib()
        print(datasets_reference())
        return OK

    if args.cmd == "ops":
        from mechstudy.engine.docs import ops_reference

        runmod.load_stdlib()
        print(ops_reference())
        return OK

    if args.cmd == "models":
        from mechstudy.engine.docs import models_listing

        runmod.load_stdlib()
        print(models_listing())
        return OK
    return USAGE


@contextmanager
def _opened(study: str, cache: str | None, writable: bool = False) -> Iterator[tuple[Any, Any]]:
    """The study's plan and a store view for it: the trusted entries plus those of the packs
    whose own study it is, read under the pack's confinement. Read-only verbs create nothing."""
    from mechstudy.engine.confine import for_study
    from mechstudy.engine.run import check_and_plan, pack_view
    from mechstudy.engine.store import Store

    store = Store(cache, create=writable)
    packs = pack_view(study, store)
    with for_study(study, from_pack=bool(packs)):
        yield check_and_plan(study), store


def _import(args: argparse.Namespace, store: Any, study_dir: Path) -> Any:
    from mechstudy.engine.pack import Limits, unpack

    u = unpack(args.from_pack if args.cmd != "unpack" else args.pack, store, study_dir,
               trust=getattr(args, "trust", False), limits=Limits.from_env(args.max_bytes))
    how = "trusted: they serve every study" if u.trusted else "kept apart: they serve only the pack's own study"
    print(f"unpacked {u.imported} entries ({u.already} already present; {how}); study: {u.study}",
          file=sys.stderr if getattr(args, "json", False) else sys.stdout)
    return u


def _run(args: argparse.Namespace) -> int:
    if args.from_pack:
        from mechstudy.engine.store import Store

        study = Path(args.study)
        u = _import(args, Store(args.cache), study.parent)
        if u.study.resolve() != study.resolve():
            print(f"warning: the pack's study is {u.study.name}, not {study.name}: its results serve only "
                  f"{u.study}", file=sys.stderr)
    scheduler = args.scheduler or (f"local:{args.workers}" if args.workers else None)
    device = None if args.device == "auto" else args.device
    from mechstudy.engine.progress import display_for
    from mechstudy.engine.warm import warm_run

    try:
        with display_for("json" if args.json else "quiet" if args.quiet else "auto") as show:
            # An unchanged study whose every result is stored: no check, plan, or import of the
            # stdlib, torch or dask (engine/warm.py). Anything else takes the full path.
            res = None if args.from_pack else warm_run(args.study, cache=args.cache, out_dir=args.out, events=show)
            if res is None:
                from mechstudy.engine.run import run_study

                res = run_study(
                    args.study,
                    cache=args.cache,
                    device=device,
                    scheduler=scheduler,
                    max_rows=args.max_rows,
                    out_dir=args.out,
                    events=show,
                )
    except Exception as e:  # noqa: BLE001 - an operator's failure is reported; anything else propagates
        from mechstudy.engine.graph import OpFailed

        if not isinstance(e, OpFailed):
            raise
        print(f"error: operator {e.node.op} failed ({e.node.dask_key}): {_one_line(e, 500)}", file=sys.stderr)
        if args.debug:
            print(e.tb, file=sys.stderr)
        else:
            print("  (rerun with --debug for the traceback; finished nodes are cached)", file=sys.stderr)
        return OP_FAILED
    if args.json or args.quiet:
        return OK  # --json: the finish event has the summary and the report's path
    if res.report:
        print(f"report: {res.report}")
    print(res.summary())
    return OK


def _pack_cmds(args: argparse.Namespace) -> int:
    from mechstudy.engine import pack as packmod
    from mechstudy.engine.store import Store

    if args.cmd == "pack":
        store = Store(args.cache, create=False)
        out = args.output or (Path(args.study).stem + ".studypack.zip")
        path, n = packmod.pack(args.study, store, out, everything=args.all)
        print(f"packed {n} entries into {path} ({path.stat().st_size / 1e6:.2f} MB)")
        return OK
    if args.cmd == "unpack":
        _import(args, Store(args.cache), Path(args.dir))
        return OK
    store = Store(args.cache)
    if args.from_pack:
        args.trust = False
        _import(args, store, Path(args.study).parent)
    from mechstudy.engine.confine import for_study
    from mechstudy.engine.run import pack_view

    packs = pack_view(args.study, store)
    with for_study(args.study, from_pack=bool(packs)):
        lines = packmod.verify(args.study, store, rtol=args.rtol, atol=args.atol, device=args.device,
                               log=lambda s: print(f"warning: {s}", file=sys.stderr))
    print("\n".join(lines))
    bad = [ln for ln in lines if not ln.startswith("ok ")]
    print(f"{len(lines) - len(bad)} ok, {len(bad)} differ or missing")
    return DIFFERS if bad else OK


def _cache_cmds(args: argparse.Namespace) -> int:
    from mechstudy.engine import cachetools
    from mechstudy.engine.store import Store

    store = Store(args.cache or None, create=False)
    remote = getattr(store, "url", None)  # object storage: ls/du/gc act on this machine's mirror
    if remote is None and not store.root.is_dir():
        raise _Refused(f"{store.root}: no such cache directory")
    if args.cache_cmd == "ls":
        sys.stdout.write(cachetools.ls(store))
        return OK
    if args.cache_cmd == "du":
        sys.stdout.write(cachetools.du(store))
        return OK
    if args.cache_cmd == "gc":
        store.writable = not args.dry_run
        if args.keep:
            missing = [k for k in args.keep if not Path(k).is_file()]
            if missing:
                raise _Refused(f"--keep {missing[0]}: no such study file")
        r = cachetools.gc(store, keep=args.keep, older_than_days=args.older_than, dry_run=args.dry_run) \
            if store.root.is_dir() else cachetools.GcResult([], [], 0, 0)
        if remote is not None and not args.dry_run:
            print(f"removed {store.collect_uploads()} uncommitted uploads from {remote}")
        verb = "would remove" if args.dry_run else "removed"
        print(f"{verb} {len(r.removed)} entries and {len(r.packs)} imported packs ({cachetools.human(r.freed)})"
              + (f"; {r.tmp} stale temp dirs" if r.tmp else ""))
        return OK
    if remote is not None:
        store.writable = args.remove
        n, problems = cachetools.verify_remote(store, remove=args.remove)
    else:
        n, problems = cachetools.verify_all(store, remove=args.remove)
    for p in problems:
        print(p)
    print(f"{n} entries checked, {len(problems)} damaged" + (" (removed)" if problems and args.remove else ""))
    return DIFFERS if problems else OK


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
    from mechstudy.engine.report import export_chart
    from mechstudy.engine.results import gather
    from mechstudy.engine.spec import suggest

    with _opened(args.study, args.cache) as (plan, store):
        if args.name not in plan.results:
            hint = suggest(args.name, plan.results)
            print(f"error: no result named {args.name!r}" + (f"; did you mean {hint!r}?" if hint else ""),
                  file=sys.stderr)
            return 1
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
    from mechstudy.engine.results import main_table
    from mechstudy.engine.spec import suggest
    from mechstudy.engine.store import CorruptEntry

    with _opened(args.study, args.cache) as (plan, store):
        if args.name not in plan.results:
            hint = suggest(args.name, plan.results)
            print(f"error: no result named {args.name!r}" + (f"; did you mean {hint!r}?" if hint else ""), file=sys.stderr)
            return STUDY_ERRORS
        import polars as pl

        frames = []
        for i, n in enumerate(plan.results[args.name].nodes):
            if not store.has(n.key):
                print(f"error: {args.name} is not computed yet; run `study run {args.study}` first", file=sys.stderr)
                return UNAVAILABLE
            try:
                art = store.get(n.key)
            except (CorruptEntry, KeyError) as e:
                print(f"error: {args.name}'s cache entry is damaged ({_one_line(e)}); `study run {args.study}` "
                      "recomputes it", file=sys.stderr)
                return UNAVAILABLE
            t = main_table(art)
            if t is None:
                print(f"error: {args.name} has no table", file=sys.stderr)
                return UNAVAILABLE
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
    return OK


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
