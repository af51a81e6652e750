"""Sparse weight gradients: a SAFT step computes the loss gradient only at the k selected entries.

The maths
---------
SAFT trains, for every parameter P with selected flat indices ``idx``, a vector ``delta`` with
``P.view(-1)[idx] = base + delta``; so dL/d delta_j = dL/dP at idx_j. Autograd would compute the whole dL/dP
and the dense reference path (``grad_engine="dense"``) gathers k values out of it. For the layers that hold
nearly all of a CLIP's weights the gradient at one entry is cheap on its own:

* linear, y = x W^T + b, x: [M, in] (M = batch rows, e.g. images x tokens), g = dL/dy: [M, out]::

      dL/dW[r, c] = sum_m g[m, r] * x[m, c]          (O(M) per entry, O(M k) for k entries,
      dL/db[r]    = sum_m g[m, r]                     instead of the O(M out in) GEMM g^T x)

  ``x @ P`` with P: [in, out] (open_clip's ``visual.proj`` and ``text_projection`` matrices) is the same with
  P = W^T; a patch embedding ``Conv2d`` whose stride equals its kernel is a linear map over the unfolded
  patches (W viewed as [out, C kh kw]).
* attention: ``nn.MultiheadAttention`` reaches ``in_proj_weight``/``out_proj.weight`` through
  ``F.multi_head_attention_forward``; for self-attention the engine replaces that call by the same
  computation written as linear (q, k, v) -> ``F.scaled_dot_product_attention`` (same masks: additive or
  boolean ``attn_mask``, the causal mask of the text tower, ``key_padding_mask``) -> linear (output), so both
  projections take the linear path above.
* embedding, y[p] = E[t_p]: dL/dE[r, c] = sum over positions p with t_p = r of g[p, c]; only the rows of
  selected entries are accumulated (an index_add into [rows, D]), never the [vocab, D] gradient.

Every other use of a selected tensor (LayerNorm weights, positional and class embeddings, ``logit_scale``,
and anything the engine does not know, such as a ResNet tower's 3x3 convolutions) takes the dense gradient
*of that one use* inside backward and gathers it at ``idx`` (``_DenseGather``): correct for any op; a
tensor reached by an unknown heavy op (convolution, matmul, ...) is listed in ``SparseGradEngine.fallbacks``
and logged once.

Gathered product or GEMM, per tensor: the gathered products cost about ``a * M * k`` (memory-bound gathers),
a dense GEMM restricted to the rows that hold a selection costs ``b * M * rows * in`` (compute-bound, far
cheaper per entry). The engine takes the gathered products while ``k < crossover * rows * in``; the crossover
density was measured with ``python -m benchmarks.speed`` (``CROSSOVER_DENSITY``). At ratios such as 0.1 the
GEMM wins.

Memory: both paths work in chunks (over entries, or over rows) of at most ``CHUNK_BYTES`` of temporaries, for
any batch and k, besides one transposed copy of g and x (the size of the activations); no [out, in] gradient
buffer is ever allocated, and parameters never get a ``.grad`` (they stay ``requires_grad=False``).

Mechanism: ``SparseGradEngine`` is a ``TorchFunctionMode`` entered around the forward pass. It sees every
torch call; a call whose arguments hold none of the selected parameters runs unchanged, so nothing is
attached to parameters or modules and the model is untouched outside the ``with`` block. The forward value
is computed from P itself (which already holds base + delta); ``delta`` is an extra input of the autograd
node only so that its gradient lands in ``delta.grad``. Under autocast (bf16, on CUDA or the CPU) the forward
runs in bf16 as usual; the gathered products are summed in fp32, the row GEMM runs in bf16 like autograd's
dense dL/dW (with fp32 accumulation inside the GEMM), and every entry gradient lands in fp32. Pure PyTorch:
nothing to compile.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

# Density k / (rows * in) below which the gathered products beat a row-restricted GEMM. Measured with
# `python -m benchmarks.speed` (section "crossover", ViT-B/16's c_fc at batch 8, one thread): 0.014 in the run of
# benchmarks/results/speed.md, 0.017 with two threads, 0.027 in a separate run (a shared machine); both paths
# cost about the same in between. The CUDA value is an estimate (GEMMs are relatively cheaper on a GPU), not a
# measurement yet: `python -m benchmarks.speed --device cuda` (make gpu-check) measures it in bf16 on the GPU.
CROSSOVER_DENSITY: dict[str, float] = {"cpu": 0.02, "cuda": 0.01}
# Upper bound on the temporaries of one chunk of entry gradients (bytes).
CHUNK_BYTES = 32 * 2**20

_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)
# Ops whose gradient w.r.t. a weight costs a product with the activations: reaching a selected tensor through
# one of them unhandled is a real fallback (logged); other ops (add, layer_norm, exp, view, ...) are cheap.
_HEAVY = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
          "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "addmm", "baddbmm", "einsum", "embedding",
          "multi_head_attention_forward", "_native_multi_head_attention", "bilinear"}


@dataclass
class EntryPlan:
    """Selected entries of a weight used as a product: grad_j = sum_m g[m, g_col_j] * x[m, x_col_j].

    ``dense`` picks the row-restricted GEMM over the gathered products (see module docstring).
    """

    g_col: torch.Tensor  # [k] int64
    x_col: torch.Tensor  # [k] int64
    dense: bool
    # for the GEMM path: unique g columns, and for each entry (in ``order``) its position among them
    g_unique: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    order: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    pos_sorted: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))

    @property
    def k(self) -> int:
        return int(self.g_col.numel())


def make_plan(g_col: torch.Tensor, x_col: torch.Tensor, x_width: int, *, device_type: str,
              dense: bool | None = None) -> EntryPlan:
    """Plan the entry gradients of one weight; ``dense`` None decides by ``CROSSOVER_DENSITY``."""
    g_unique, pos = torch.unique(g_col, return_inverse=True)
    if dense is None:
        density = g_col.numel() / max(1, g_unique.numel() * x_width)
        dense = density >= CROSSOVER_DENSITY.get(device_type, CROSSOVER_DENSITY["cpu"])
    order = torch.argsort(pos, stable=True)
    return EntryPlan(g_col, x_col, dense, g_unique, order, pos[order])


def entry_grads(g: torch.Tensor, x: torch.Tensor, plan: EntryPlan) -> torch.Tensor:
    """fp32 [k]: sum_m g[m, g_col] * x[m, x_col], with g: [M, G], x: [M, X] (any float dtype)."""
    m = g.shape[0]
    out = torch.empty(plan.k, dtype=torch.float32, device=g.device)
    if plan.k == 0:
        return out
    if plan.dense:
        # GEMM over the g columns that hold a selection, chunked by columns: [u, M] @ [M, X] -> [u, X], in g's
        # dtype (bf16 under autocast: the tensor-core GEMM that autograd's dense dL/dW runs; fp32 otherwise)
        xf = x.to(g.dtype)
        step = max(1, CHUNK_BYTES // (4 * (x.shape[1] + m)))
        bounds = torch.searchsorted(plan.pos_sorted,
                                    torch.arange(0, plan.g_unique.numel() + step, step, device=g.device)).tolist()
        for ci, u0 in enumerate(range(0, plan.g_unique.numel(), step)):
            s, e = bounds[ci], bounds[ci + 1]
            if s == e:
                continue
            rows = (g.index_select(1, plan.g_unique[u0:u0 + step]).T @ xf).float()
            sel = plan.order[s:e]
            out[sel] = rows[plan.pos_sorted[s:e] - u0, plan.x_col[sel]]
        return out
    if 2 * plan.k < g.shape[1] + x.shape[1]:
        # few entries: gather their columns directly (cheaper than transposing g and x)
        step = max(1, CHUNK_BYTES // (3 * 4 * m))
        for s in range(0, plan.k, step):
            a = g.index_select(1, plan.g_col[s:s + step]).float()
            a.mul_(x.index_select(1, plan.x_col[s:s + step]).float())
            out[s:s + step] = a.sum(0)
        return out
    # gathered products: transpose once so every gather copies contiguous rows of length M
    gt = g.T.float().contiguous()
    xt = x.T.float().contiguous()
    step = max(1, CHUNK_BYTES // (3 * 4 * m))
    for s in range(0, plan.k, step):
        a = gt.index_select(0, plan.g_col[s:s + step])
        a.mul_(xt.index_select(0, plan.x_col[s:s + step]))
        out[s:s + step] = a.sum(1)
    return out


class _SparseLinear(torch.autograd.Function):
    """y = x W^T + b (or x @ P when ``transposed``); backward: dL/dx as usual, dL/d delta at the entries."""

    @staticmethod
    def forward(ctx, x, weight, bias, w_delta, b_delta, w_plan, b_idx, transposed):
        ctx.save_for_backward(x, weight)
        ctx.w_plan, ctx.b_idx, ctx.transposed = w_plan, b_idx, transposed
        return x @ weight if transposed else F.linear(x, weight, bias)

    @staticmethod
    @torch.autocast("cuda", enabled=False)
    @torch.autocast("cpu", enabled=False)
    def backward(ctx, g):
        # the dtypes are chosen explicitly below, whether or not backward() was called inside an autocast block
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            w = weight.to(g.dtype)
            gx = (g @ w.T if ctx.transposed else g @ w).to(x.dtype)
        g2 = g.reshape(-1, g.shape[-1])
        if ctx.needs_input_grad[3]:
            gw = entry_grads(g2, x.reshape(-1, x.shape[-1]), ctx.w_plan)
        if ctx.needs_input_grad[4]:
            gb = g2.float().sum(0)[ctx.b_idx]
        return gx, None, None, gw, gb, None, None, None


class _SparseEmbedding(torch.autograd.Function):
    """y = E[tokens]; backward: dL/d delta at the selected entries, accumulated over the selected rows only."""

    @staticmethod
    def forward(ctx, tokens, weight, delta, padding_idx, rows, lookup, pos, cols):
        ctx.save_for_backward(tokens)
        ctx.padding_idx, ctx.rows, ctx.lookup, ctx.pos, ctx.cols = padding_idx, rows, lookup, pos, cols
        return F.embedding(tokens, weight, padding_idx)

    @staticmethod
    def backward(ctx, g):
        (tokens,) = ctx.saved_tensors
        flat = tokens.reshape(-1)
        slot = ctx.lookup[flat]
        keep = slot >= 0
        if ctx.padding_idx is not None:
            keep &= flat != ctx.padding_idx  # PyTorch never trains the padding row
        g2 = g.reshape(-1, g.shape[-1])
        acc = torch.zeros(ctx.rows.numel(), g2.shape[1], dtype=torch.float32, device=g.device)
        acc.index_add_(0, slot[keep], g2[keep].float())
        return None, None, acc[ctx.pos, ctx.cols], None, None, None, None, None


class _DenseGather(torch.autograd.Function):
    """Identity on P in the forward; backward gathers this use's dense dL/dP at the entries into delta."""

    @staticmethod
    def forward(ctx, p, delta, idx):
        ctx.idx = idx
        return p.view_as(p)

    @staticmethod
    def backward(ctx, g):
        return None, g.reshape(-1)[ctx.idx].float(), None


class SparseGradEngine(TorchFunctionMode):
    """Route dL/dP at the selected entries straight into ``delta[name].grad``; enter around the forward pass.

    ``params``: {name: Parameter} (frozen), ``idx``: {name: int64 flat indices on P's device},
    ``delta``: {name: fp32 [k] leaf tensors}. ``fallbacks``: {name: op} of tensors that took the dense
    gradient of an op the engine does not know (logged once per tensor).
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], idx: dict[str, torch.Tensor],
                 delta: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.by_id = {id(params[n]): n for n in idx}
        self.params, self.idx, self.delta = params, idx, delta
        self.fallbacks: dict[str, str] = {}
        self.paths: dict[str, str] = {}  # name -> how its gradient is computed (for logs, tests, benchmarks)
        self._plans: dict[tuple[str, str], Any] = {}
        self._logged: set[str] = set()

    # -- dispatch ---------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self._holds_selected(args, kwargs) or getattr(func, "__name__", "") == "__get__":
            return func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        handler = _HANDLERS.get(name)
        if handler is not None:
            out = handler(self, func, args, kwargs)
            if out is not NotImplemented:
                return out
        return self._dense_gather_call(func, name, args, kwargs)

    def _sel(self, t: Any) -> str | None:
        return self.by_id.get(id(t)) if isinstance(t, torch.nn.Parameter) else None

    def _holds_selected(self, args: tuple, kwargs: dict) -> bool:
        for a in (*args, *kwargs.values()):
            if isinstance(a, list | tuple):
                if any(self._sel(b) for b in a):
                    return True
            elif self._sel(a):
                return True
        return False

    def _gathered(self, t: Any) -> Any:
        n = self._sel(t)
        return _DenseGather.apply(t, self.delta[n], self.idx[n]) if n else t

    def _dense_gather_call(self, func, name: str, args: tuple, kwargs: dict):
        def sub(a: Any) -> Any:
            if isinstance(a, list | tuple):
                return type(a)(self._gathered(b) for b in a)
            return self._gathered(a)

        for a in (*args, *kwargs.values()):
            for b in a if isinstance(a, list | tuple) else (a,):
                n = self._sel(b)
                if n:
                    self._note(n, f"dense gather ({name})", heavy=name in _HEAVY)
        return func(*(sub(a) for a in args), **{k: sub(v) for k, v in kwargs.items()})

    def _note(self, n: str, path: str, *, heavy: bool = False) -> None:
        self.paths.setdefault(n, path)
        if heavy and n not in self.fallbacks:
            self.fallbacks[n] = path
            log.warning("sparse gradient engine: %s falls back to the dense gradient (%s)", n, path)

    # -- products ----------------------------------------------------------------------------------------
    def _entry_plan(self, n: str, kind: str, shape: tuple[int, ...]) -> EntryPlan:
        """kind 'linear': P is [out, in]; 'matmul': P is [in, out] used as x @ P."""
        key = (n, kind)
        if key not in self._plans:
            idx = self.idx[n]
            rows, cols = idx // shape[1], idx % shape[1]
            g_col, x_col, x_width = (rows, cols, shape[1]) if kind == "linear" else (cols, rows, shape[0])
            plan = make_plan(g_col, x_col, x_width, device_type=idx.device.type)
            self._plans[key] = plan
            self._note(n, f"{'GEMM + gather' if plan.dense else 'gathered products'} ({kind})")
        return self._plans[key]

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               *, transposed: bool = False, weight_2d: torch.Tensor | None = None) -> torch.Tensor:
        """``F.linear(x, weight, bias)`` (or ``x @ weight``) with entry gradients for selected weight/bias.

        ``weight_2d``: the weight as used (a [out, C kh kw] view of a conv kernel); ``weight`` names it."""
        w2 = weight if weight_2d is None else weight_2d
        wn, bn = self._sel(weight), self._sel(bias)
        if wn is None and bn is None:
            return x @ w2 if transposed else F.linear(x, w2, bias)
        plan = self._entry_plan(wn, "matmul" if transposed else "linear", tuple(w2.shape)) if wn else None
        if bn:
            self._note(bn, "bias sum + gather")
        return _SparseLinear.apply(x, w2, bias, self.delta[wn] if wn else None, self.delta[bn] if bn else None,
                                   plan, self.idx[bn] if bn else None, transposed)


# -- handlers: return NotImplemented to take the dense-gather fallback ------------------------------------
def _h_linear(eng: SparseGradEngine, func, args, kwargs):
    bound = dict(zip(("input", "weight", "bias"), args, strict=False)) | kwargs
    x, w, b = bound["input"], bound["weight"], bound.get("bias")
    if eng._sel(x) or w.dim() != 2:
        return NotImplemented
    return eng.linear(x, w, b)


def _h_matmul(eng: SparseGradEngine, func, args, kwargs):
    if kwargs or len(args) != 2:
        return NotImplemented
    x, p = args
    if getattr(func, "__name__", "") == "__rmatmul__":
        x, p = p, x
    if eng._sel(x) or not eng._sel(p) or p.dim() != 2 or x.dim() < 1:
        return NotImplemented
    return eng.linear(x, p, None, transposed=True)


def _h_conv2d(eng: SparseGradEngine, func, args, kwargs):
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    bound: dict[str, Any] = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    bound |= dict(zip(names, args, strict=False)) | kwargs
    x, w, b = bound["input"], bound["weight"], bound["bias"]
    kh, kw = w.shape[-2:]
    pair = (lambda v: tuple(v) if isinstance(v, list | tuple) else (v, v))  # noqa: E731
    patchify = (pair(bound["stride"]) == (kh, kw) and pair(bound["padding"]) == (0, 0)
                and pair(bound["dilation"]) == (1, 1) and bound["groups"] == 1 and x.dim() == 4
                and not isinstance(bound["padding"], str) and not eng._sel(x))
    if not patchify:
        return NotImplemented
    n, _, h, wd = x.shape
    patches = F.unfold(x, (kh, kw), stride=(kh, kw)).transpose(1, 2)  # [N, L, C kh kw]
    out = eng.linear(patches, w, b, weight_2d=w.reshape(w.shape[0], -1))  # [N, L, out]
    return out.transpose(1, 2).reshape(n, w.shape[0], h // kh, wd // kw)


def _h_embedding(eng: SparseGradEngine, func, args, kwargs):
    names = ("input", "weight", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse")
    bound = dict(zip(names, args, strict=False)) | kwargs
    tokens, w = bound["input"], bound["weight"]
    n = eng._sel(w)
    if n is None or bound.get("max_norm") is not None or bound.get("scale_grad_by_freq") or w.dim() != 2:
        return NotImplemented
    key = (n, "embedding")
    if key not in eng._plans:
        idx = eng.idx[n]
        rows, pos = torch.unique(idx // w.shape[1], return_inverse=True)
        lookup = torch.full((w.shape[0],), -1, dtype=torch.int64, device=idx.device)
        lookup[rows] = torch.arange(rows.numel(), device=idx.device)
        eng._plans[key] = (rows, lookup, pos, idx % w.shape[1])
        eng._note(n, "embedding rows")
    rows, lookup, pos, cols = eng._plans[key]
    pad = bound.get("padding_idx")
    if pad is not None and pad < 0:
        pad += w.shape[0]
    return _SparseEmbedding.apply(tokens, w, eng.delta[n], pad, rows, lookup, pos, cols)


def _canonical(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Boolean masks (True = masked out) become additive float masks, as in ``F.multi_head_attention_forward``."""
    if mask is None or mask.is_floating_point():
        return mask if mask is None else mask.to(dtype)
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))


def _h_mha(eng: SparseGradEngine, func, args, kwargs):
    """Self-attention as linear -> scaled_dot_product_attention -> linear (same masks, same result)."""
    a = _MHA_SIGNATURE.bind(*args, **kwargs)
    a.apply_defaults()
    p = a.arguments
    q = p["query"]
    simple = (q is p["key"] and q is p["value"] and q.dim() == 3 and not p["use_separate_proj_weight"]
              and p["bias_k"] is None and p["bias_v"] is None and not p["add_zero_attn"]
              and p["static_k"] is None and p["static_v"] is None and not p["need_weights"]
              and p["in_proj_weight"] is not None and not eng._sel(q))
    if not simple:
        return NotImplemented
    length, bsz, dim = q.shape
    heads = p["num_heads"]
    hd = dim // heads
    qkv = eng.linear(q, p["in_proj_weight"], p["in_proj_bias"])  # [L, N, 3E]
    qh, kh, vh = (t.reshape(length, bsz * heads, hd).transpose(0, 1).view(bsz, heads, length, hd)
                  for t in qkv.unflatten(-1, (3, dim)).unbind(-2))
    attn_mask, kpm, is_causal = p["attn_mask"], p["key_padding_mask"], p["is_causal"]
    if is_causal and kpm is None:
        attn_mask = None  # F.multi_head_attention_forward hands the causal hint to SDPA the same way
    else:
        is_causal = False
        attn_mask = _canonical(attn_mask, q.dtype)
        kpm = _canonical(kpm, q.dtype)
        if kpm is not None:
            kpm = kpm.view(bsz, 1, 1, length).expand(-1, heads, -1, -1).reshape(bsz * heads, 1, length)
            attn_mask = kpm if attn_mask is None else attn_mask + kpm
    if attn_mask is not None:
        if attn_mask.dim() == 2:
            attn_mask = attn_mask.unsqueeze(0)
        attn_mask = (attn_mask.unsqueeze(0) if attn_mask.size(0) == 1
                     else attn_mask.view(bsz, heads, -1, length))  # as F.multi_head_attention_forward does
    drop = p["dropout_p"] if p["training"] else 0.0
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask, drop, is_causal)  # [N, H, L, hd]
    out = out.permute(2, 0, 1, 3).reshape(length * bsz, dim)
    out = eng.linear(out, p["out_proj_weight"], p["out_proj_bias"]).view(length, bsz, dim)
    return out, None


_HANDLERS = {
    "linear": _h_linear,
    "matmul": _h_matmul,
    "__matmul__": _h_matmul,
    "__rmatmul__": _h_matmul,
    "conv2d": _h_conv2d,
    "embedding": _h_embedding,
    "multi_head_attention_forward": _h_mha,
}
