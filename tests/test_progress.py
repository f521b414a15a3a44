"""What `study run` shows while running: --json events, plain lines off a terminal, --quiet,
and the live view (rendered on a fake terminal)."""

from __future__ import annotations

import io
import json

from rich.console import Console

from mechstudy.engine import cli
from mechstudy.engine.progress import Live, PlainLines
from mechstudy.engine.run import check_and_plan


def _study(tmp_path, tiny_gpt2_dir):
    f = tmp_path / "p.study"
    f.write_text(f'study "progress"\nmodel m = hf "{tiny_gpt2_dir}"\ndataset ioi = ioi(n=4, seed=1)\n'
                 "base = evaluate m on ioi with logit_diff\nh = patch heads in layer 1 of m on ioi with logit_diff\n")
    return str(f)


def test_json_events_one_per_line(tmp_path, tiny_gpt2_dir, capfd):
    study, cache = _study(tmp_path, tiny_gpt2_dir), str(tmp_path / "cache")
    n_nodes = len(check_and_plan(study).nodes())
    assert cli.main(["run", study, "--cache", cache, "--json", "--out", str(tmp_path / "out")]) == 0
    out, err = capfd.readouterr()
    events = [json.loads(line) for line in out.splitlines()]  # every stdout line is one JSON event
    assert events[0] == {"event": "start", "study": study, "nodes": n_nodes, "tasks": n_nodes}
    nodes = [e for e in events if e["event"] == "node"]
    assert [e["done"] for e in nodes] == list(range(1, n_nodes + 1)) and {e["total"] for e in nodes} == {n_nodes}
    assert all(e["status"] == "computed" and len(e["key"]) == 32 for e in nodes)
    fin = events[-1]
    assert fin["event"] == "finish" and fin["computed"] == n_nodes and fin["cached"] == 0
    assert fin["report"].endswith("report.html")
    # Warm: the roots are cache hits; nothing is computed.
    assert cli.main(["run", study, "--cache", cache, "--json", "--out", str(tmp_path / "out")]) == 0
    events = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert events[-1]["computed"] == 0 and events[-1]["cached"] == n_nodes
    assert all(e["status"] == "cached" for e in events if e["event"] == "node")


def test_plain_lines_off_a_terminal_and_quiet(tmp_path, tiny_gpt2_dir, capfd):
    study, cache = _study(tmp_path, tiny_gpt2_dir), str(tmp_path / "cache")
    assert cli.main(["run", study, "--cache", cache, "--out", str(tmp_path / "out")]) == 0
    out, err = capfd.readouterr()
    n = len(check_and_plan(study).nodes())
    assert err.splitlines()[0] == f"running {study}: {n} of {n} nodes to run or check"
    assert sum(f"/{n}] " in line and "computed in" in line for line in err.splitlines()) == n
    assert out.splitlines()[-1].startswith(f"{n} computed, 0 from cache")
    assert cli.main(["run", study, "--cache", cache, "--quiet", "--out", str(tmp_path / "out")]) == 0
    assert capfd.readouterr() == ("", "")


def test_plain_lines_throttle_progress_inside_a_node():
    err = io.StringIO()
    d = PlainLines(err=err, every=3600)
    for i in range(1, 11):
        d({"event": "progress", "key": "k" * 32, "op": "train_model", "done": i, "total": 10, "note": f"loss {1 / i:.2f}"})
    # The first report and the last (done == total); the eight between fall in the interval.
    assert err.getvalue().splitlines() == ["    train_model-kkkkkkkkkkkkkkkk: 1/10 loss 1.00",
                                           "    train_model-kkkkkkkkkkkkkkkk: 10/10 loss 0.10"]


def test_live_view_counts_nodes_and_shows_a_bar_inside_a_looping_node():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=110, color_system=None)
    live = Live(console=console)
    live({"event": "start", "study": "s", "nodes": 4, "tasks": 3})
    live({"event": "node", "key": "a" * 32, "op": "model", "status": "cached", "seconds": 0.0, "done": 1, "total": 3})
    live({"event": "progress", "key": "b" * 32, "op": "train_model", "done": 5, "total": 20, "note": "loss 0.31"})
    inner = live.bar.tasks[live.inner["b" * 32]]
    assert (inner.completed, inner.total, inner.fields["extra"]) == (5, 20, "loss 0.31")
    live({"event": "node", "key": "b" * 32, "op": "train_model", "status": "computed", "seconds": 2.0, "done": 2,
          "total": 3})
    assert "b" * 32 not in live.inner  # the node's bar goes when the node is done
    live({"event": "node", "key": "c" * 32, "op": "patch", "status": "computed", "seconds": 0.5, "done": 3, "total": 3})
    live.close()
    nodes = live.bar.tasks[live.nodes]
    assert (nodes.completed, nodes.total) == (3, 3) and (live.misses, live.hits) == (2, 1)
    text = buf.getvalue()
    assert "3/3" in text and "2 computed \u00b7 1 cached" in text
    assert "train_model-bbbbbbbbbbbbbbbb computed in 2.00 s" in text


def test_progress_inside_a_looping_node_reaches_the_json_events(tmp_path, capfd):
    """`train toy` reports its training steps through ctx.progress (engine/nodeprogress.py): the
    events arrive between the node's start and its `node` event, ending at done == total."""
    f = tmp_path / "toy.study"
    f.write_text('study "toy"\nt = train toy n=5 m=2 sparsity=0.9 importance=0.9 seeds=1 steps=300 batch=64\n')
    assert cli.main(["run", str(f), "--cache", str(tmp_path / "cache"), "--json", "--out", str(tmp_path / "out")]) == 0
    events = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    train = next(e for e in events if e["event"] == "node" and e["op"] == "toy_superposition")
    inside = [e for e in events if e["event"] == "progress" and e["key"] == train["key"]]
    assert len(inside) >= 2 and inside[0]["done"] < inside[-1]["done"] == inside[-1]["total"] == 300
    assert all(e["note"] == "training steps" for e in inside)
    assert events.index(inside[-1]) < events.index(train)  # progress comes before the node finishes
