"""The model adapter: read and edit sites of a native Hugging Face model with PyTorch hooks.

The HF model runs as it is; an `Adapter` only registers forward (pre-)hooks on the modules its
architecture's `ArchTable` names, for the duration of one call, and removes them afterwards. With
no captures and no edits no hook is registered at all, so logits are bit-identical to HF's.

Example (see tests/test_gpt2_adapter.py for runnable ones)::

    adapter = load_adapter("path/to/gpt2-dir")                    # eager attention, eval mode
    out = adapter.forward(ids, mask, capture=[Site(0, "z")], logits_at=answer_pos)
    out.logits                                                      # [B, V] at each row's position
    out.acts[Site(0, "z")]                                          # [B, S, H, d_head]
    clean_z = ...                                                   # [B, S, H, d_head]
    patched = adapter.logits(ids, mask, at=answer_pos,
                             edits=[Edit(Site(0, "z", head=3), clean_z[:, :, 3], rows=[0, 2])])
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from mechstudy.stdlib.models.sites import SITE_KINDS, ArchTable, HookPoint, Site, arch_for


@dataclass(frozen=True, eq=False)
class Edit:
    """An intervention at one site, applied where the site's activation flows through the model.

    replace: ``act = where(mask, value, act)``; add: ``act = where(mask, act + value, act)``.
    `value` broadcasts against the site's activation for the FULL batch (with `site.head` set, the
    head's slice), so per-row values are simply full-batch tensors; only masked entries are used and
    every other entry passes through bit for bit. The mask is the AND of whichever of `rows`
    (batch rows), `positions` (the same positions in every row; ones past the sequence end are
    ignored), `row_positions` ([B], one position per row, -1 for none) and `heads` (z only) are
    given, or an explicit bool `mask` broadcastable to the activation.
    """

    site: Site
    value: torch.Tensor | float
    mode: str = "replace"
    rows: Sequence[int] | torch.Tensor | None = None
    positions: Sequence[int] | torch.Tensor | None = None
    row_positions: torch.Tensor | None = None
    heads: Sequence[int] | None = None
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("replace", "add"):
            raise ValueError(f"edit mode must be 'replace' or 'add', not {self.mode!r}")

    def region(self, act: torch.Tensor) -> torch.Tensor | None:
        """The bool mask for an activation shaped [B, S, ...] (None: everywhere)."""
        if self.mask is not None:
            return self.mask.to(act.device)
        if self.rows is None and self.positions is None and self.row_positions is None and self.heads is None:
            return None
        b, s, dev = act.shape[0], act.shape[1], act.device
        m = torch.ones(b, s, dtype=torch.bool, device=dev)
        if self.rows is not None:
            r = torch.zeros(b, dtype=torch.bool, device=dev)
            r[torch.as_tensor(self.rows, dtype=torch.long, device=dev)] = True
            m &= r[:, None]
        if self.positions is not None:
            p = torch.as_tensor(self.positions, dtype=torch.long, device=dev)
            keep = torch.zeros(s, dtype=torch.bool, device=dev)
            keep[p[(p >= 0) & (p < s)]] = True
            m &= keep[None, :]
        if self.row_positions is not None:
            rp = torch.as_tensor(self.row_positions, dtype=torch.long, device=dev)
            m &= torch.arange(s, device=dev)[None, :] == rp[:, None]
        m = m.view(b, s, *([1] * (act.ndim - 2)))
        if self.heads is not None:
            if self.site.spec.head_axis != 2 or self.site.head is not None:
                raise ValueError(f"`heads` needs a whole per-head site, not {self.site}")
            h = torch.zeros(act.shape[2], dtype=torch.bool, device=dev)
            h[torch.as_tensor(list(self.heads), dtype=torch.long, device=dev)] = True
            m = m & h.view(1, 1, -1, 1)
        return m


@dataclass
class Output:
    """What a forward returns: logits ([B, S, V]; [B, V] with one position per row; None when
    not computed) and the captured activations by site."""

    logits: torch.Tensor | None
    acts: dict[Site, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Resume:
    """Where a run starts instead of the embeddings (`Adapter.forward(resume=...)`): a shortcut,
    never an intervention. `resid` [B, S, d_model] is the residual stream these very inputs have
    at block `layer`'s input (captured from an unedited run); with `z` [B, S, heads, d_head], the
    heads' z of that same run at that layer, the block's attention is not recomputed either: its
    output is the native output projection of z (after any edits of z)."""

    layer: int
    resid: torch.Tensor
    z: torch.Tensor | None = None


# Site kinds a run resumed with `Resume.z` may edit or capture at the resumed layer (everything
# from z on; q, k, v, the pattern and the attention module's own output are not computed there).
REPLAY_KINDS = frozenset({"z", "mlp_post", "mlp_out", "resid_post"})


class _Replay(torch.nn.Module):
    """Stands in for a block's attention module for one call: returns the native output
    projection of a given z, (out, None) as HF attention modules do."""

    def __init__(self, out_proj: torch.nn.Module, z: torch.Tensor) -> None:
        super().__init__()
        self.out_proj = out_proj
        self.z = z

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return self.out_proj(self.z.flatten(-2)), None


class _Stop(Exception):
    """Raised by a hook once every requested site is captured and no logits are wanted."""


@dataclass
class _Task:
    site: Site  # whole site (head None) at this hook point
    point: HookPoint
    edits: list[tuple[Edit, Site | None]] = field(default_factory=list)  # (edit, base site for write_via)
    capture: list[Site] = field(default_factory=list)  # requested sites read here (may name a head)
    keep: bool = False  # kept for a write_via edit elsewhere


class Adapter:
    """A loaded HF model plus its architecture table. Hooks are registered per call, so calls lock.

    Everything architecture-specific comes from the table (`sites.ArchTable`, pure data) and the
    model's `ModelInfo`; there are no adapter subclasses.

    Attributes:
        model, tokenizer, table, info (spec.ModelInfo), n_layers, n_heads, n_kv_heads, d_model,
        d_head, d_mlp, parallel, dims (axis sizes by name).
    """

    def __init__(self, model: Any, tokenizer: Any, table: ArchTable, config: Mapping[str, Any]) -> None:
        if table.base_relative and model.base_model is not model:
            table = _prefixed(table, model.base_model_prefix + ".")
        self.model = model
        self.tokenizer = tokenizer
        self.table = table
        self.info = table.info(config)
        self.dims = self.info.dims
        self.n_layers, self.n_heads, self.d_model = self.info.n_layers, self.info.n_heads, self.info.d_model
        self.n_kv_heads, self.d_head, self.d_mlp = self.info.n_kv_heads, self.info.d_head, self.info.d_mlp
        self.parallel = self.info.parallel
        self._lock = threading.RLock()
        fwd = inspect.signature(type(model).forward).parameters
        self._native_keep = "logits_to_keep" in fwd
        self._takes_positions = "position_ids" in fwd
        self._blocks = _blocks_path(model, table, self.n_layers, config)
        self.fused = _supports_fused(model)

    @property
    def kernel(self) -> str:
        """The attention a forward that touches no pattern runs: "sdpa" (fused) or "eager"."""
        return "sdpa" if self.fused else "eager"

    @contextlib.contextmanager
    def attention(self, impl: str) -> Iterator[None]:
        """Inside: the model's attention runs as `impl` ("eager" or "sdpa"), then as before.

        The model rests in eager mode (a plain HF call can return attention probabilities);
        `forward` runs the fused kernel ("sdpa") unless it reads or writes a pattern, which only
        eager attention materialises. Both compute softmax(q k^T / sqrt(d) + mask) v; they agree
        to float rounding (tests/test_speed_paths.py)."""
        cfg = self.model.config
        old = cfg._attn_implementation
        if impl == old:
            yield
            return
        cfg._attn_implementation = impl
        try:
            yield
        finally:
            cfg._attn_implementation = old

    @property
    def can_resume(self) -> bool:
        """Whether `forward(resume=...)` can start a run at a block's input (see `forward`)."""
        return self._blocks is not None

    @property
    def can_replay(self) -> bool:
        """Whether a resumed run can replace the first block's attention by its output
        projection of a given z: the z site is the input of a direct child of the attention
        module, whose output (element 0) is attn_out (every causal table; not BERT's)."""
        z, out = self.table.points.get("z"), self.table.points.get("attn_out")
        return (self.can_resume and z is not None and out is not None and z.on == "input"
                and z.module.rsplit(".", 1)[0] == self.table.attention and out.module == self.table.attention
                and out.on == "output" and (out.index or 0) == 0)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def sites(self, kind: str, layers: Iterable[int] | None = None) -> list[Site]:
        """Every site of one kind, in layer order (the one site of a model-level kind)."""
        if not SITE_KINDS[kind].per_layer:
            return [Site(None, kind)]
        return [Site(l, kind) for l in (range(self.n_layers) if layers is None else layers)]

    def shape(self, site: Site, batch: int, seq: int) -> tuple[int, ...]:
        """The activation shape of `site` for a [batch, seq] input."""
        return site.spec.shape(self.dims, batch, seq, site.head)

    def point(self, kind: str) -> HookPoint:
        try:
            return self.table.points[kind]
        except KeyError:
            raise LookupError(f"{self.table.arch} models have no {kind!r} site") from None

    def module(self, path: str, layer: int | None = None) -> torch.nn.Module:
        """A native module by dotted path (with `{layer}` formatted)."""
        return self.model.get_submodule(path if layer is None else path.format(layer=layer))

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm applied to a residual-stream tensor [..., d_model] (native module)."""
        if self.table.final_norm is None:
            raise LookupError(f"{self.table.arch} models have no final norm")
        return self.module(self.table.final_norm).forward(x)

    def unembed(self, x: torch.Tensor, normed: bool = False, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [..., d_vocab] of a residual-stream tensor [..., d_model]: the final norm (unless
        `normed`) then the unembedding, both native modules (the logit lens). With `columns`
        [K] token ids: only those logits, [..., K], from the same weight rows (and bias) of the
        unembedding, a linear layer (`can_unembed_columns`); equal to the full logits' columns
        to float rounding."""
        head = self.model.get_output_embeddings()
        if head is None:
            raise LookupError(f"this {self.table.arch} checkpoint has no unembedding")
        x = x if normed else self.final_norm(x)
        if columns is None:
            return head(x)
        if not self.can_unembed_columns:
            return head(x)[..., columns.to(x.device)]
        cols = columns.to(head.weight.device)
        bias = None if head.bias is None else head.bias[cols]
        return torch.nn.functional.linear(x, head.weight[cols], bias)

    @property
    def can_unembed_columns(self) -> bool:
        """Whether the unembedding is a plain linear layer (so some columns can be computed alone)."""
        return type(self.model.get_output_embeddings()) is torch.nn.Linear

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        capture: Iterable[Site] = (),
        edits: Iterable[Edit] = (),
        logits_at: torch.Tensor | None = None,
        logits: bool = True,
        grad: bool = False,
        resume: Resume | tuple[int, torch.Tensor] | None = None,
        only_at: torch.Tensor | None = None,
    ) -> Output:
        """Run a batch, applying `edits` and capturing `capture`.

        Args:
            input_ids: [B, S] token ids; pads masked by `attention_mask`. Right padding is what
                the stdlib uses; left padding works too (positions are then counted from each
                row's first real token).
            attention_mask: [B, S] 1 for real tokens, or None.
            capture: sites to return (after any edits at the same site).
            edits: interventions, applied in order.
            logits_at: [B] one position per row -> logits [B, V]; [B, K] -> [B, K, V]. Only those
                positions go through the unembedding.
            logits: False stops the forward as soon as every captured site is read.
            grad: keep the autograd graph (for gradient-based methods).
            resume: a `Resume(L, resid_pre[, z])` (or a (L, resid_pre) tuple): a shortcut, not an
                intervention: the residual stream these very inputs have at block L's input
                (e.g. captured from an unedited run), so blocks 0 .. L-1, which a run whose
                every capture and edit lies at layer >= L computes unchanged, are skipped. The
                native blocks L .. n-1 run as they are; below L only the embeddings are computed
                (and discarded). With z, block L's attention is replaced by its output projection
                of z (`can_replay`); then only REPLAY_KINDS may be touched at layer L. Sites at
                layers below L are refused. On a model whose block list cannot be entered
                part-way (`can_resume` False) the full run is made instead.
            only_at: [B] the one position per row that is read after the last block's attention
                (a metric's answer position): the last block's attention output projection and
                MLP then run at that position only (`_answer_tail`); their outputs elsewhere, and
                everything after them there (resid_post of the last layer, the final norm), are
                left unspecified. The caller reads logits or ln_final at `only_at` only; captures
                of other sites downstream of those modules in the last layer are refused.
        """
        capture, edits = list(capture), list(edits)
        if resume is not None:
            if not isinstance(resume, Resume):
                resume = Resume(int(resume[0]), resume[1])
            start = resume.layer
            touched = [*capture, *(e.site for e in edits)]
            low = [s for s in touched if s.layer is not None and s.layer < start]
            if low:
                raise ValueError(f"{low[0]} lies before the resumed layer {start}")
            if resume.z is not None:
                if not self.can_replay:
                    resume = Resume(resume.layer, resume.resid)
                elif any(s.layer == start and s.kind not in REPLAY_KINDS for s in touched):
                    bad = next(s for s in touched if s.layer == start and s.kind not in REPLAY_KINDS)
                    raise ValueError(f"{bad} is not computed when layer {start}'s attention is replayed from z")

        mids = [s for s in capture if s.kind == "resid_mid"] if self.parallel else []
        if mids:
            # Parallel blocks: no module holds resid_mid (see archs/neox.py); read it as the sum of
            # resid_pre and attn_out, each captured after any edits at either site.
            parts = {s: (Site(s.layer, "resid_pre"), Site(s.layer, "attn_out")) for s in mids}
            inner = [s for s in capture if s.kind != "resid_mid"]
            extra = [p for pair in parts.values() for p in pair if p not in inner]
            out = self.forward(input_ids, attention_mask, capture=inner + extra, edits=edits, logits_at=logits_at,
                               logits=logits, grad=grad, resume=resume, only_at=only_at)
            for s, (pre, attn) in parts.items():
                out.acts[s] = out.acts[attn] + out.acts[pre]  # HF's sequential order: attn + hidden
            for p in extra:
                out.acts.pop(p, None)
            return out
        tasks = self._tasks(capture, edits)
        eager = any(t.point.eager_only for group in tasks.values() for t in group)
        impl = "eager" if eager else self.kernel
        acts: dict[Site, torch.Tensor] = {}
        scratch: dict[Site, torch.Tensor] = {}
        wanted = sum(len(t.capture) for group in tasks.values() for t in group)
        state = {"left": wanted}
        dev = self.device
        kw: dict[str, Any] = {"input_ids": input_ids.to(dev), "use_cache": False}
        if attention_mask is not None:
            kw["attention_mask"] = attention_mask.to(dev)
            if self._takes_positions and bool((attention_mask[:, 0] == 0).any()):
                # Left padding: number real tokens from 0, as HF's generate() does. Right-padded and
                # unpadded batches keep HF's own default positions, so their logits stay native.
                kw["position_ids"] = (kw["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        at = None if logits_at is None else torch.as_tensor(logits_at, dtype=torch.long).to(dev)
        idx = None if at is None else (at[:, None] if at.ndim == 1 else at)  # [B, K]
        if idx is not None and self._native_keep:
            # HF unembeds only these positions (per-row positions: a 2-D logits_to_keep).
            kw["logits_to_keep"] = idx
        with self._lock, torch.set_grad_enabled(grad):
            handles = [self._register(path, on, group, acts, scratch, state, stop=not logits)
                       for (path, on), group in tasks.items()]
            try:
                if only_at is not None:
                    self._answer_tail(torch.as_tensor(only_at, dtype=torch.long).to(dev), tasks, handles)
                with self.attention(impl), self._resumed(resume, handles):
                    # An encoder without a head (a bare BertModel) has no logits: None, not an error.
                    out = getattr(self.model(**kw), "logits", None)
            except _Stop:
                out = None
            finally:
                for h in handles:
                    h.remove()
        if out is not None and idx is not None:
            if "logits_to_keep" in kw and out.shape[:2] != idx.shape:
                # A transformers version without per-row logits_to_keep: use full logits from now on.
                self._native_keep = False
                return self.forward(input_ids, attention_mask, capture=capture, edits=edits,
                                    logits_at=logits_at, logits=logits, grad=grad, resume=resume,
                                    only_at=only_at)
            if "logits_to_keep" not in kw:
                out = torch.take_along_dim(out, idx[..., None], dim=1)
            if at.ndim == 1:
                out = out[:, 0]
        return Output(out if logits else None, acts)

    def capture(self, input_ids, attention_mask=None, sites: Iterable[Site] = ()) -> dict[Site, torch.Tensor]:
        """Activations only; the forward stops after the deepest requested site."""
        return self.forward(input_ids, attention_mask, capture=sites, logits=False).acts

    def logits(self, input_ids, attention_mask=None, edits: Iterable[Edit] = (), at=None) -> torch.Tensor:
        return self.forward(input_ids, attention_mask, edits=edits, logits_at=at).logits

    # ---- hook plumbing -------------------------------------------------------------------
    def _answer_tail(self, at: torch.Tensor, tasks: Mapping[tuple[str, str], list[_Task]], handles: list) -> None:
        """Run the last block's attention output projection (z's module) and MLP (mlp_out's) at
        one position per row: a pre-hook gathers [B, S, D] -> [B, 1, D] after every edit there,
        and a forward hook scatters the result back (zeros elsewhere) before any edit at the
        output. Causal attention means every other position of the last block's output is read
        by nothing but the final norm and the unembedding, which are read at `at` only. A module
        with one of our hooks inside it (an edit or capture of mlp_post in the last layer) is
        left whole."""
        last = self.n_layers - 1
        downstream = {"attn_out", "resid_mid", "mlp_post", "mlp_out", "resid_post"}
        for group in tasks.values():
            for t in group:
                if t.capture and t.site.layer == last and t.site.kind in downstream:
                    raise ValueError(f"{t.site} is not computed at every position with only_at")
        paths = [path for path, _ in tasks]
        rows = torch.arange(at.shape[0], device=at.device)
        for kind, on in (("z", "input"), ("mlp_out", "output")):
            point = self.table.points.get(kind)
            if point is None or point.on != on:
                continue
            path = point.module.format(layer=last)
            if any(p.startswith(path + ".") for p in paths):
                continue
            mod = self.model.get_submodule(path)
            width: dict[str, int] = {}

            def gather(module, args, kwargs, width=width):
                x = args[0] if args else kwargs["hidden_states"]
                width["s"] = x.shape[1]
                x = x[rows, at][:, None]
                return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

            def scatter(module, args, out, width=width):
                tup = isinstance(out, tuple)
                y = out[0] if tup else out
                full = y.new_zeros(y.shape[0], width["s"], *y.shape[2:])
                full[rows, at] = y[:, 0]
                return (full, *out[1:]) if tup else full

            handles.append(mod.register_forward_pre_hook(gather, with_kwargs=True))
            handles.append(mod.register_forward_hook(scatter, prepend=True))

    @contextlib.contextmanager
    def _resumed(self, resume: Resume | None, handles: list) -> Iterator[None]:
        """Inside: the model's block list starts at block L, whose input is the given residual.

        Hooks are registered on the blocks themselves (by path, before this), so they stay where
        they are; the start hook is prepended, so edits at L's input see the resumed residual."""
        if resume is None or self._blocks is None:
            yield
            return
        start, resid = resume.layer, resume.resid
        parent_path, name = self._blocks.rsplit(".", 1)
        parent = self.model.get_submodule(parent_path)
        full = getattr(parent, name)
        resid = resid.to(self.device, self.dtype)
        swaps: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
        if resume.z is not None:  # resolved before the block list is shortened
            attn_path = self.table.attention.format(layer=start)
            out_proj = self.model.get_submodule(self.table.points["z"].module.format(layer=start))
            owner_path, attr = attn_path.rsplit(".", 1)
            owner = self.model.get_submodule(owner_path)
            swaps.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, _Replay(out_proj, resume.z.to(self.device, self.dtype)))

        def enter(module, args, kwargs):
            if args:
                if args[0].shape != resid.shape:
                    raise ValueError(f"resumed residual {tuple(resid.shape)} != block input {tuple(args[0].shape)}")
                return (resid, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": resid}

        handles.append(full[start].register_forward_pre_hook(enter, with_kwargs=True, prepend=True))
        setattr(parent, name, torch.nn.ModuleList(list(full)[start:]))
        try:
            yield
        finally:
            setattr(parent, name, full)
            for owner, attr, module in reversed(swaps):
                setattr(owner, attr, module)

    def _tasks(self, capture: list[Site], edits: list[Edit]) -> dict[tuple[str, str], list[_Task]]:
        by_site: dict[Site, _Task] = {}

        def task(site: Site) -> _Task:
            whole = site.whole
            if whole.layer is not None and not 0 <= whole.layer < self.n_layers:
                raise IndexError(f"{site}: layer out of range (model has {self.n_layers})")
            if whole not in by_site:
                by_site[whole] = _Task(whole, self.point(whole.kind))
            return by_site[whole]

        for s in capture:
            task(s).capture.append(s)
        for e in edits:
            pt = self.point(e.site.kind)
            if not pt.writable:
                raise ValueError(f"{e.site.kind} sites can be read but not edited")
            if pt.write_via is not None:
                if e.site.head is not None:
                    raise ValueError(f"{e.site} cannot be edited per head")
                via, base = pt.write_via
                base_site = Site(e.site.layer, base)
                task(base_site).keep = True
                task(Site(e.site.layer, via)).edits.append((e, base_site))
            else:
                task(e.site).edits.append((e, None))
        groups: dict[tuple[str, str], list[_Task]] = defaultdict(list)
        for t in by_site.values():
            groups[(t.point.module.format(layer=t.site.layer), t.point.on)].append(t)
        return dict(groups)

    def _register(self, path, on, group, acts, scratch, state, stop):
        mod = self.model.get_submodule(path)

        def process(t: torch.Tensor, task: _Task) -> torch.Tensor:
            pt, kind = task.point, task.site.spec
            if pt.derive is not None:  # a quantity computed from the tensor, read only
                value = DERIVE[pt.derive](mod, t)
                for s in task.capture:
                    acts[s] = value
                    state["left"] -= 1
                return t
            n_heads = kind.n_units(self.dims) if pt.split_heads else 0
            whole = t
            if pt.part is not None:
                i, n = pt.part
                if pt.per_head:  # [.., H * n * d] -> [.., H, n * d] -> this part: [.., H, d]
                    blocks = t.unflatten(-1, (n_heads, -1))
                    w = blocks.shape[-1] // n
                    view = blocks.narrow(-1, i * w, w)
                else:  # [.., n * W] -> [.., W] (a third of GPT-2's c_attn output)
                    w = t.shape[-1] // n
                    view = t.narrow(-1, i * w, w)
                    view = view.unflatten(-1, (n_heads, -1)) if pt.split_heads else view
            else:
                view = t.unflatten(-1, (n_heads, -1)) if pt.split_heads else t
            for e, base in task.edits:
                view = _apply(view, e, scratch.get(base) if base is not None else None)
            if task.keep:
                scratch[task.site] = view
            for s in task.capture:
                a = view if s.head is None else view.select(kind.head_axis, s.head)
                acts[s] = a
                state["left"] -= 1
            if pt.part is not None and not task.edits:
                return whole  # read only: the fused output passes through untouched
            if pt.part is not None and pt.per_head:
                blocks = whole.unflatten(-1, (n_heads, -1))
                return torch.cat([blocks.narrow(-1, 0, i * w), view,
                                  blocks.narrow(-1, (i + 1) * w, blocks.shape[-1] - (i + 1) * w)], -1).flatten(-2)
            out = view.flatten(-2) if pt.split_heads else view
            if pt.part is not None:
                return torch.cat([whole.narrow(-1, 0, i * w), out,
                                  whole.narrow(-1, (i + 1) * w, whole.shape[-1] - (i + 1) * w)], -1)
            return out

        def finish() -> None:
            if stop and state["left"] == 0:
                raise _Stop

        if on == "input":
            def pre_hook(module, args, kwargs):
                if args:
                    new = args[0]
                    for task in group:
                        new = process(new, task)
                    finish()
                    return (new, *args[1:]), kwargs
                new = kwargs["hidden_states"]
                for task in group:
                    new = process(new, task)
                finish()
                return args, {**kwargs, "hidden_states": new}

            return mod.register_forward_pre_hook(pre_hook, with_kwargs=True)

        def hook(module, args, output):
            tup = isinstance(output, tuple)
            items = list(output) if tup else [output]
            for task in group:
                i = task.point.index or 0
                if items[i] is None:
                    raise RuntimeError(f"{task.site} is not produced by {path} (eager attention needed?)")
                items[i] = process(items[i], task)
            finish()
            return tuple(items) if tup else items[0]

        return mod.register_forward_hook(hook)


def _blocks_path(model: Any, table: ArchTable, n_layers: int, config: Mapping[str, Any]) -> str | None:
    """The dotted path of the model's list of blocks, when a run may enter it part-way: every
    table reads resid_pre on a block's input, so its module path names the list; the list must
    hold exactly the model's layers, and every layer must be of one kind (a model that looks up a
    per-layer attention type by the loop index would misread a shortened list)."""
    point = table.points.get("resid_pre")
    if point is None or point.on != "input" or not point.module.endswith(".{layer}"):
        return None
    path = point.module[: -len(".{layer}")]
    try:
        blocks = model.get_submodule(path)
    except AttributeError:
        return None
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) != n_layers:
        return None
    kinds = config.get("layer_types")
    if kinds and len(set(kinds)) > 1:
        return None
    return path


def _supports_fused(model: Any) -> bool:
    """Whether the model can switch between eager attention and the fused kernel (sdpa) call by
    call: its class supports sdpa through HF's attention interface, one config serves every
    module, and no eager-only attention variant is configured."""
    cfg = model.config
    if not getattr(model, "_supports_sdpa", False) or getattr(cfg, "sub_configs", None):
        return False
    if getattr(cfg, "reorder_and_upcast_attn", False):  # GPT-2's upcast path exists in eager only
        return False
    try:
        return bool(model._can_set_attn_implementation())
    except AttributeError:
        return False


def is_layer_norm(norm: torch.nn.Module) -> bool:
    """True for a centring LayerNorm, False for an RMS norm (no centring, maybe no bias)."""
    return isinstance(norm, torch.nn.LayerNorm)


def norm_eps(norm: torch.nn.Module) -> float:
    return float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-5)))


def norm_scale(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What `norm` divides its input x [..., D] by: sigma (LayerNorm) or the root mean square (RMS
    norm), each with the norm's epsilon, [..., 1], in x's dtype (the norm's own computation may
    upcast; this is the exact quantity in the input's precision)."""
    if is_layer_norm(norm):
        return (x.var(-1, unbiased=False, keepdim=True) + norm_eps(norm)).sqrt()
    return (x.pow(2).mean(-1, keepdim=True) + norm_eps(norm)).sqrt()


DERIVE = {"norm_scale": norm_scale}


def _prefixed(table: ArchTable, prefix: str) -> ArchTable:
    """The table with every module path prefixed (an encoder wrapped by a task head)."""
    def p(path: str | None) -> str | None:
        return None if path is None else prefix + path

    points = {k: dataclasses.replace(pt, module=prefix + pt.module) for k, pt in table.points.items()}
    return dataclasses.replace(table, points=points, attention=p(table.attention), attn_norm=p(table.attn_norm),
                               mlp_norm=p(table.mlp_norm), final_norm=p(table.final_norm))


def _apply(act: torch.Tensor, e: Edit, base: torch.Tensor | None) -> torch.Tensor:
    """One edit on an activation [B, S, ...]; `base` is subtracted from a replace (write_via)."""
    sel = None if e.site.head is None else e.site.spec.head_axis
    target = act if sel is None else act.select(sel, e.site.head)
    value = torch.as_tensor(e.value, device=act.device)
    if value.dtype != act.dtype:
        value = value.to(act.dtype)
    if e.mode == "add":
        new = target + value
    elif base is not None:  # write_via: the edited site is base + act, so act := value - base
        new = value - base
    else:
        new = value
    m = e.region(target)
    new = new.expand_as(target) if m is None else torch.where(m, new, target)
    if sel is None:
        return new
    out = act.clone()
    out.select(sel, e.site.head).copy_(new)
    return out


def load_adapter(path: str | Path, dtype: str = "float32", device: str = "cpu") -> Adapter:
    """Load a local HF model directory with eager attention, in eval mode, as an Adapter. The
    architecture table says which transformers Auto class loads it. Forwards run HF's fused
    kernels where HF has one for the same function: sdpa attention unless a pattern is read or
    written (`Adapter.attention`), and GELUTanh for GPT-2's gelu_new (`fuse_activations`)."""
    import transformers
    from transformers import AutoTokenizer

    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    table = arch_for(cfg.get("model_type", "?"))
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    auto = getattr(transformers, table.auto_class(cfg))
    model = auto.from_pretrained(path, attn_implementation="eager", dtype=torch_dtype, local_files_only=True)
    model.to(device).eval()
    fuse_activations(model)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return Adapter(model, tok, table, cfg)


def fuse_activations(model: torch.nn.Module) -> int:
    """Swap GPT-2's `gelu_new` modules (NewGELUActivation: eight elementwise passes, one a generic
    power) for HF's own fused kernel of the same function (GELUTanh, `gelu_pytorch_tanh`, which HF
    documents as equivalent up to rounding): the MLP's activation was a third of a GPT-2-small
    block's time on one CPU thread. Both are the tanh approximation of GELU; they agree to 2.4e-7
    (tests/test_speed_paths.py). Returns how many modules were swapped."""
    from transformers.activations import GELUTanh, NewGELUActivation

    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, GELUTanh())
                n += 1
    return n
