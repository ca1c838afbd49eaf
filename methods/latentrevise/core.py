"""The LatentRevise revision core: Frank-Wolfe over the convex hull of the vocabulary embeddings.

Given a prompt x, a failed rollout y and the gold answer a*, the policy is frozen and the INPUT
EMBEDDINGS of y's reasoning prefix p (its first L tokens) are optimized:

    min_Z  NLL(gold | x, Z)  +  away_weight * Away(c | x, Z)        Z_i in conv{e_v : v in vocab}

`gold` is a short answer statement (" The answer is \\boxed{a*}.") teacher-forced right after
the prefix; c is the failed continuation (the rest of y). Away is bounded below so that it cannot
dominate: unlikelihood, mean_t -log(1 - p(c_t)), or a clipped NLL, -min(NLL(c), clip).

Frank-Wolfe keeps every iterate inside the hull without projections: per position the linear
minimization oracle picks the vertex s_i = argmin_v <G_i, e_v> (G = dObjective/dZ) and
z_i <- (1 - g) z_i + g e_{s_i}. Per position we keep the sparse convex weights over the vertices
used so far (at most K+1 of them: the original token plus one per step); they are the exact
representation of the iterate and the record of which tokens the revision moved toward.

Choices the abstract leaves open are `ReviseConfig` fields (checked when the config is built). The
non-obvious ones:
- step size `step_rule`: "harmonic" g_k = 2/(k+3) (default; the textbook 2/(k+2) has g_0 = 1,
  which throws the original prefix away at the first step), "const" (`step_const`), or
  "line-search" (per example, the best of `line_search_grid` by extra forward passes).
- the oracle is CHUNKED over the vocabulary (`oracle_chunk` rows of E at a time), so its extra
  memory is N x chunk scores, never B x L x V; special tokens and the embedding rows past the
  tokenizer (Qwen pads E to 151936 rows) are never picked.
- cost: the prompt is run once per batch and its KV cache reused by all K steps through a
  read-only cache layer (`_FrozenPrefixLayer`: it attends over the cached prompt but never grows,
  so every step and every checkpoint recomputation sees the same keys). Gold and away rows are two
  batch rows per example sharing that cache; Z is run twice (once per row) - a custom tree mask
  would save L tokens per example but is fragile across attention kernels.
- `keep_best`: the objective is not convex, so with a constant step the K-th iterate is often worse
  than an earlier one (measured on the tiny model); the iterate with the lowest objective among the
  K+1 evaluated ones is returned (the original prefix included), at no extra cost. Needs eval_final
  to consider the K-th.
- logits only at the loss positions (gold and away targets), never over the prefix.
- GPU: bf16 autocast (the iterate and the weights stay float32) and per-layer activation
  checkpointing (our own wrapper; transformers' drops the cache). CPU: float32, no checkpointing.
- the policy is frozen inside `frozen_params` (requires_grad_(False), restored afterwards): no
  parameter ever receives a gradient and there is no optimizer.

One batch, in `Reviser._revise_batch`: `batch_layout` pads the items into rows and loss targets
(`BatchLayout`), the prompt cache is filled once (`_prefill`), then K times: the objective and its
gradient (`_objective`), the oracle, the step size (`_step_sizes`) and `fw_update`, a pure function
of the state (`FWState`) kept apart from the model so that the hull invariants are testable on
hand-made tensors; `keep_if_better` tracks the best iterate. Last, discretization and packing into
`ReviseResult`s.

Compute is counted in forward-token equivalents (FTE): a forward over T tokens = T, a forward plus
input-gradient backward (frozen weights: no weight gradients) = 2T, +T with checkpointing, the
oracle = N*V*H / P (its FLOPs in units of one token's 2P-FLOP forward, P = parameter count).
"""

from __future__ import annotations

import math
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F

from harness.config import check_choices

DEFAULT_GOLD_TEMPLATE = " The final answer is \\boxed{{answer}}."  # "{answer}" is replaced
TINY_GOLD_TEMPLATE = " The answer is \\boxed{{answer}}."  # the arith solutions' own closing sentence

StepRule = Literal["harmonic", "const", "line-search"]
LossTerms = Literal["both", "gold", "away"]
AwayForm = Literal["unlikelihood", "clipped-nll"]
Discretize = Literal["max-weight", "nearest"]
OracleDtype = Literal["model", "float32"]


@dataclass
class ReviseConfig:
    # prefix split: L = clamp(round(prefix_frac * |y|), prefix_min_tokens, prefix_max_tokens), < |y|
    prefix_frac: float = 0.5
    prefix_max_tokens: int | None = 256
    prefix_min_tokens: int = 1
    prefix_len: int | None = None  # a fixed L (still < |y|); overrides prefix_frac
    revise_last: int | None = None  # M: revise only the last M prefix positions (None = all L)
    fw_steps: int = 10  # K
    step_rule: StepRule = "harmonic"  # harmonic: 2/(k+3) | const: step_const | line-search
    step_const: float = 0.3
    line_search_grid: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    hull: bool = True  # False (ablation): unconstrained normalized-gradient steps, p' by nearest token
    # objective
    loss_terms: LossTerms = "both"  # both: gold + away_weight*away | gold | away (ablation)
    gold_template: str | None = None  # None: TINY_GOLD_TEMPLATE for the tiny-boxed template, else DEFAULT
    away_weight: float = 0.5
    away_form: AwayForm = "unlikelihood"  # unlikelihood: mean -log(1-p) | clipped-nll: -min(NLL, away_clip)
    away_clip: float = 5.0  # nats per token (clipped-nll)
    away_max_tokens: int | None = 128  # first tokens of the failed continuation the away term sees
    # oracle and discretization
    oracle_chunk: int = 16384  # vocabulary rows per chunk of G E^T
    oracle_dtype: OracleDtype = "model"  # model: matmul in the model dtype | float32
    exclude_special: bool = True
    discretize: Discretize = "max-weight"  # max-weight: heaviest vertex | nearest: nearest embedding row
    record_top: int = 5  # top tokens stored per revised position
    # execution
    revise_batch: int = 8  # failed rollouts revised together (one padded batch)
    reuse_prompt_cache: bool = True
    grad_checkpointing: bool | None = None  # None: on for CUDA, off for CPU
    eval_final: bool = True  # one extra forward so the loss curves have K+1 points
    keep_best: bool = True  # return the iterate with the lowest objective among 0..K, not the K-th (see docstring)

    def __post_init__(self) -> None:
        # flat configs inherit from several dataclasses and only the first __post_init__ in the MRO runs:
        # pass the call on so that a later base's checks are not skipped
        getattr(super(), "__post_init__", lambda: None)()
        check_choices(self)
        name = type(self).__name__
        at_least = lambda v, lo: v is None or v >= lo  # None: the optional limit is off
        rules = (
            ("fw_steps", self.fw_steps >= 0, ">= 0"),
            ("prefix_frac", 0 < self.prefix_frac <= 1, "in (0, 1]"),
            ("prefix_min_tokens", self.prefix_min_tokens >= 1, ">= 1"),
            ("prefix_max_tokens", at_least(self.prefix_max_tokens, self.prefix_min_tokens),
             ">= prefix_min_tokens or None"),
            ("prefix_len", at_least(self.prefix_len, 1), ">= 1 or None"),
            ("revise_last", at_least(self.revise_last, 1), ">= 1 or None"),
            ("step_const", 0 < self.step_const <= 1, "in (0, 1]"),
            ("line_search_grid", len(self.line_search_grid) > 0 and all(0 < g <= 1 for g in self.line_search_grid),
             "non-empty, each in (0, 1]"),
            ("away_weight", self.away_weight >= 0, ">= 0"),
            ("away_clip", self.away_clip > 0, "> 0"),
            ("away_max_tokens", at_least(self.away_max_tokens, 1), ">= 1 or None"),
            ("oracle_chunk", self.oracle_chunk >= 1, ">= 1"),
            ("record_top", self.record_top >= 0, ">= 0"),
            ("revise_batch", self.revise_batch >= 1, ">= 1"),
        )
        bad = [f"{f} must be {need}, got {getattr(self, f)!r}" for f, ok, need in rules if not ok]
        if bad:
            raise ValueError(f"{name}: " + "; ".join(bad))


@dataclass
class ReviseItem:
    prompt_ids: list[int]
    rollout_ids: list[int]
    gold: str
    key: Any = None


@dataclass
class ReviseResult:
    item: ReviseItem
    prefix_len: int  # L
    revise_start: int  # first revised position (L - M, or 0)
    prefix_ids: list[int]  # p
    discrete_ids: list[int]  # p'
    vertex_ids: torch.Tensor  # [L, K+1] long; slots past n_vertices hold stale ids at weight 0
    vertex_weights: torch.Tensor  # [L, K+1] float32, each row sums to 1
    iterate: torch.Tensor  # [L, H] float32, the final Z
    gold_loss: list[float]  # at iterates 0..K (K+1 values when eval_final)
    away_loss: list[float | None]
    gammas: list[float]
    oracle_ids: list[list[int]]  # per step, the oracle's vertex for each revised position
    prompt_embeds: torch.Tensor  # [|x| + L, H] float32 on CPU: continuation input
    fte: float
    wall_s: float
    peak_mem_mb: float | None
    gold_ids: list[int] = field(default_factory=list)
    best_step: int = 0  # which iterate (0..K) was returned; K unless keep_best picked an earlier one

    def top_tokens(self, tokenizer, k: int = 5) -> list[list[list[Any]]]:
        """Per revised position: [[token text, weight], ...], heaviest first, duplicates merged."""
        out = []
        for i in range(self.revise_start, self.prefix_len):
            merged: dict[int, float] = {}
            for v, w in zip(self.vertex_ids[i].tolist(), self.vertex_weights[i].tolist()):
                if w > 0:
                    merged[v] = merged.get(v, 0.0) + w
            top = sorted(merged.items(), key=lambda kv: -kv[1])[:k]
            out.append([[tokenizer.decode([v]), round(w, 5)] for v, w in top])
        return out


def gold_text(answer: str, cfg: ReviseConfig, template: str | None = None) -> str:
    tpl = cfg.gold_template or (TINY_GOLD_TEMPLATE if template == "tiny-boxed" else DEFAULT_GOLD_TEMPLATE)
    return tpl.replace("{answer}", answer)


def prefix_length(n_tokens: int, cfg: ReviseConfig) -> int:
    """L for a rollout of n tokens; 0 when the rollout is too short to split (< 2 tokens)."""
    if n_tokens < 2:
        return 0
    L = max(cfg.prefix_min_tokens, round(cfg.prefix_frac * n_tokens))
    if cfg.prefix_len is not None:
        L = cfg.prefix_len
    elif cfg.prefix_max_tokens is not None:
        L = min(L, cfg.prefix_max_tokens)
    return max(1, min(L, n_tokens - 1))


def step_size(k: int, cfg: ReviseConfig) -> float:
    if cfg.step_rule == "harmonic":
        return 2.0 / (k + 3)
    if cfg.step_rule == "const":
        return cfg.step_const
    raise ValueError(f"step_rule {cfg.step_rule!r} has no closed form (line-search is per example)")


@contextmanager
def frozen_params(model: torch.nn.Module) -> Iterator[None]:
    """requires_grad_(False) on every parameter for the block, then the previous flags back."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


# ------------------------------------------------------------------------------------------------
# linear minimization oracle (chunked over the vocabulary)
# ------------------------------------------------------------------------------------------------

def lmo(grad: torch.Tensor, E: torch.Tensor, chunk: int, allowed: torch.Tensor | None = None,
        dtype: torch.dtype | None = None) -> torch.Tensor:
    """argmin_v <grad_n, E_v> for each row n of grad [N, H]; E [V, H]. Extra memory O(N * chunk)."""
    dtype = dtype or E.dtype
    g = grad.to(dtype)
    best_val = torch.full((g.shape[0],), math.inf, device=g.device, dtype=torch.float32)
    best_idx = torch.zeros(g.shape[0], dtype=torch.long, device=g.device)
    for start in range(0, E.shape[0], chunk):
        scores = (g @ E[start:start + chunk].to(dtype).T).float()
        if allowed is not None:
            scores.masked_fill_(~allowed[start:start + chunk], math.inf)
        val, idx = scores.min(dim=-1)
        del scores  # before the next chunk's scores exist: one chunk alive at a time
        better = val < best_val  # strict: ties keep the lowest id, as torch.argmin does
        best_val = torch.where(better, val, best_val)
        best_idx = torch.where(better, idx + start, best_idx)
    return best_idx


def nearest_tokens(Z: torch.Tensor, E: torch.Tensor, chunk: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_v ||E_v - z_n||^2 for each row of Z [N, H], chunked like the oracle."""
    sq = (E.float() ** 2).sum(-1)  # ||e_v||^2; ||z||^2 is constant per row
    best_val = torch.full((Z.shape[0],), math.inf, device=Z.device)
    best_idx = torch.zeros(Z.shape[0], dtype=torch.long, device=Z.device)
    for start in range(0, E.shape[0], chunk):
        scores = sq[start:start + chunk] - 2 * (Z.float() @ E[start:start + chunk].float().T)
        if allowed is not None:
            scores.masked_fill_(~allowed[start:start + chunk], math.inf)
        val, idx = scores.min(dim=-1)
        better = val < best_val
        best_val = torch.where(better, val, best_val)
        best_idx = torch.where(better, idx + start, best_idx)
    return best_idx


# ------------------------------------------------------------------------------------------------
# the prompt's KV cache, reused read-only by every step
# ------------------------------------------------------------------------------------------------

def _frozen_prefix_cache(cache: Any) -> Any:
    """Turn a filled DynamicCache into one that attends over the prompt but never grows."""
    from transformers.cache_utils import DynamicLayer

    class _FrozenPrefixLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    layers = getattr(cache, "layers", None)
    if not layers or not all(type(layer) is DynamicLayer for layer in layers):
        raise TypeError("prompt KV reuse needs a transformers DynamicCache made of DynamicLayers; "
                        "set reuse_prompt_cache=False for this model")
    for layer in layers:
        layer.__class__ = _FrozenPrefixLayer
    return cache


@contextmanager
def _checkpointed_layers(decoder: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Per-decoder-layer activation checkpointing that keeps the (read-only) cache argument."""
    from torch.utils.checkpoint import checkpoint

    layers = list(getattr(decoder, "layers", [])) if enabled else []
    for layer in layers:
        inner = layer.forward
        layer.forward = lambda *a, _f=inner, **kw: checkpoint(_f, *a, use_reentrant=False, **kw)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # back to the class's method


# ------------------------------------------------------------------------------------------------
# one batch's layout: B examples as R rows (B gold rows, then B away rows) sharing the prompt
# ------------------------------------------------------------------------------------------------

@dataclass
class BatchLayout:
    """The padded tensors of one batch. Row r belongs to example r % B; its new part (after the
    left-padded prompt) is [Z_b (L_b positions) ; suffix], right-padded to T_new."""

    prefix_lens: list[int]  # L per example
    starts: list[int]  # first revised position per example (L - M, or 0)
    golds: list[list[int]]  # the gold statement's ids per example
    suffixes: list[list[int]]  # per row: the gold statements, then (use_away) the failed continuations
    use_away: bool
    x_ids: torch.Tensor  # [B, Tx] left-padded prompts
    x_mask: torch.Tensor  # [B, Tx]
    pos_x: torch.Tensor  # [B, Tx] the prompts' position ids
    rows_b: torch.Tensor  # [R] each row's example
    tok: torch.Tensor  # [R, T_new] the suffix ids (padding over the Z positions)
    is_z: torch.Tensor  # [R, T_new] True at the Z positions
    pos_new: torch.Tensor  # [R, T_new] position ids, continuing each row's prompt
    attn: torch.Tensor  # [R, Tx + T_new]
    tgt_row: torch.Tensor  # [N] per loss target: its row,
    tgt_pos: torch.Tensor  # [N] the position whose hidden state predicts it,
    tgt_tok: torch.Tensor  # [N] and the token
    n_tgt: torch.Tensor  # [R] float: targets per row
    p_ids: torch.Tensor  # [B, Lmax] the prefixes, padded
    active: torch.Tensor  # [B, Lmax] bool: the revised positions

    @property
    def B(self) -> int:
        return len(self.prefix_lens)

    @property
    def R(self) -> int:
        return len(self.suffixes)

    @property
    def Lmax(self) -> int:
        return self.p_ids.shape[1]

    @property
    def T_new(self) -> int:
        return self.tok.shape[1]


def _left_padded(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, max len] ids and attention mask, padded on the left (the prompts end where Z starts)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, T - len(s):] = torch.tensor(s)
        mask[b, T - len(s):] = 1
    return ids, mask


def batch_layout(items: Sequence[ReviseItem], cfg: ReviseConfig, tokenizer: Any, template: str | None,
                 dev: torch.device) -> BatchLayout:
    """The rows, loss targets, masks and revised positions of one batch (see `BatchLayout`)."""
    B = len(items)
    Ls = [prefix_length(len(it.rollout_ids), cfg) for it in items]
    starts = [0 if cfg.revise_last is None else max(0, L - cfg.revise_last) for L in Ls]
    golds = [tokenizer(gold_text(it.gold, cfg, template), add_special_tokens=False).input_ids for it in items]
    aways = [it.rollout_ids[L:][: cfg.away_max_tokens] for it, L in zip(items, Ls)]  # [:None] keeps all
    use_away = cfg.loss_terms == "away" or (cfg.loss_terms == "both" and cfg.away_weight > 0)
    suffixes = golds + (aways if use_away else [])
    R, Lmax = len(suffixes), max(Ls)
    row_L = [Ls[r % B] for r in range(R)]
    T_new = max(L + len(s) for L, s in zip(row_L, suffixes))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    x_ids, x_mask = _left_padded([it.prompt_ids for it in items], pad)
    x_ids, x_mask = x_ids.to(dev), x_mask.to(dev)
    rows_b = torch.arange(R, device=dev) % B
    tok = torch.full((R, T_new), pad, dtype=torch.long)
    new_mask = torch.zeros((R, T_new), dtype=torch.long)
    tgt_row, tgt_pos, tgt_tok = [], [], []
    for r, (L, s) in enumerate(zip(row_L, suffixes)):
        tok[r, L:L + len(s)] = torch.tensor(s, dtype=torch.long)
        new_mask[r, : L + len(s)] = 1
        tgt_row += [r] * len(s)
        tgt_pos += list(range(L - 1, L - 1 + len(s)))  # the hidden state that predicts each suffix token
        tgt_tok += s
    tok, new_mask = tok.to(dev), new_mask.to(dev)
    tgt_row_t = torch.tensor(tgt_row, device=dev)
    p_ids = torch.full((B, Lmax), pad, dtype=torch.long)
    for b, (it, L) in enumerate(zip(items, Ls)):
        p_ids[b, :L] = torch.tensor(it.rollout_ids[:L])
    ar = torch.arange(Lmax, device=dev)[None, :]
    return BatchLayout(
        prefix_lens=Ls, starts=starts, golds=golds, suffixes=suffixes, use_away=use_away,
        x_ids=x_ids, x_mask=x_mask, pos_x=(x_mask.cumsum(-1) - 1).clamp(min=0), rows_b=rows_b, tok=tok,
        is_z=torch.arange(T_new, device=dev)[None, :] < torch.tensor(row_L, device=dev)[:, None],
        pos_new=x_mask.sum(-1)[rows_b, None] + torch.arange(T_new, device=dev)[None, :],
        attn=torch.cat([x_mask[rows_b], new_mask], dim=1),
        tgt_row=tgt_row_t, tgt_pos=torch.tensor(tgt_pos, device=dev), tgt_tok=torch.tensor(tgt_tok, device=dev),
        n_tgt=torch.zeros(R, device=dev).index_add_(0, tgt_row_t, torch.ones(len(tgt_row), device=dev)),
        p_ids=p_ids.to(dev),
        active=(ar < torch.tensor(Ls, device=dev)[:, None]) & (ar >= torch.tensor(starts, device=dev)[:, None]),
    )


# ------------------------------------------------------------------------------------------------
# the Frank-Wolfe state and its update (no model: testable on hand-made tensors)
# ------------------------------------------------------------------------------------------------

@dataclass
class FWState:
    """A batch's iterate and its exact representation as sparse convex weights over vertices."""

    Z: torch.Tensor  # [B, Lmax, H] float32
    vids: torch.Tensor  # [B, Lmax, K+1] long: vertex ids; slots from n_used on are unused (weight 0)
    vw: torch.Tensor  # [B, Lmax, K+1] float32: their weights, each row on the simplex
    n_used: torch.Tensor  # [B, Lmax] long: slots in use


def initial_state(p_ids: torch.Tensor, E: torch.Tensor, K: int) -> FWState:
    """The unrevised prefix: each position is its own token's vertex at weight 1, with room for K more."""
    B, Lmax = p_ids.shape
    vids = torch.zeros((B, Lmax, K + 1), dtype=torch.long, device=p_ids.device)
    vids[..., 0] = p_ids
    vw = torch.zeros((B, Lmax, K + 1), dtype=torch.float32, device=p_ids.device)
    vw[..., 0] = 1.0
    n_used = torch.ones((B, Lmax), dtype=torch.long, device=p_ids.device)
    return FWState(E[p_ids].float(), vids, vw, n_used)


def fw_update(state: FWState, s: torch.Tensor, gamma: torch.Tensor, active: torch.Tensor,
              E: torch.Tensor) -> FWState:
    """z_i <- (1 - g_b) z_i + g_b e_{s_i} at the active positions, the weights updated to match.

    s [B, Lmax]: the oracle's vertices; gamma [B]: the step size per example; active [B, Lmax] bool;
    E [V, H]. A vertex already used at a position gets its weight raised (one slot per vertex), a new
    one takes the next free slot; inactive positions come back unchanged (their step is 0)."""
    n_slots = state.vids.shape[-1]
    g = gamma[:, None] * active  # [B, Lmax]
    Z = (1 - g)[..., None] * state.Z + g[..., None] * E[s].float()
    vw = state.vw * (1 - g)[..., None]
    match = (state.vids == s[..., None]) & (torch.arange(n_slots, device=s.device) < state.n_used[..., None])
    vw = vw + match * g[..., None]
    new = ~match.any(-1) & active
    # K steps add at most K vertices to the K+1 slots; the clamp only keeps one_hot in range
    new_slot = F.one_hot(state.n_used.clamp(max=n_slots - 1), n_slots).bool() & new[..., None]
    vids = torch.where(new_slot, s[..., None], state.vids)
    vw = vw + new_slot * g[..., None]
    return FWState(Z, vids, vw, state.n_used + new.long())


@dataclass
class Best:
    """keep_best: per example, the lowest objective seen, at which iterate, and that iterate's state."""

    total: torch.Tensor  # [B]
    step: torch.Tensor  # [B] long
    state: FWState


def keep_if_better(best: Best, k: int, total: torch.Tensor, state: FWState) -> Best:
    """`best` with the examples whose objective at iterate k (`total`, of `state`) is lower replaced."""
    better = total.detach() < best.total
    pick = lambda cur, old: torch.where(better.view(-1, *[1] * (cur.dim() - 1)), cur, old)
    kept = FWState(pick(state.Z, best.state.Z), pick(state.vids, best.state.vids), pick(state.vw, best.state.vw),
                   pick(state.n_used, best.state.n_used))
    return Best(torch.where(better, total.detach(), best.total),
                torch.where(better, torch.full_like(best.step, k), best.step), kept)


@dataclass
class _Trace:
    """What the descent records for the results, per example."""

    gold: list[list[float]] = field(default_factory=list)  # per evaluated iterate
    away: list[list[float]] = field(default_factory=list)  # nan without the away term
    gammas: list[list[float]] = field(default_factory=list)  # per step
    oracle: list[torch.Tensor] = field(default_factory=list)  # per step, [B, Lmax]

    def losses(self, gold: torch.Tensor, away: torch.Tensor) -> None:
        self.gold.append(gold.detach().tolist())
        self.away.append(away.detach().tolist())


# ------------------------------------------------------------------------------------------------
# the reviser
# ------------------------------------------------------------------------------------------------

Objective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class Reviser:
    """Revises batches of failed rollouts with a frozen causal LM (Hugging Face, decoder + lm_head)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: ReviseConfig = ReviseConfig(),
                 template: str | None = None):
        self.model, self.tokenizer, self.cfg, self.template = model, tokenizer, cfg, template
        self.decoder = getattr(model, model.base_model_prefix)
        self.lm_head = model.get_output_embeddings()
        self.E = model.get_input_embeddings().weight  # [V, H]
        self.device = self.E.device
        self.cuda = self.device.type == "cuda"
        self.checkpointing = cfg.grad_checkpointing if cfg.grad_checkpointing is not None else self.cuda
        V = self.E.shape[0]
        allowed = torch.zeros(V, dtype=torch.bool, device=self.device)
        allowed[: min(V, len(tokenizer))] = True  # rows past the tokenizer are padding, never trained
        if cfg.exclude_special:
            allowed[[i for i in tokenizer.all_special_ids if i < V]] = False
        self.allowed = allowed
        self.n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        self.oracle_dtype = torch.float32 if cfg.oracle_dtype == "float32" else self.E.dtype

    def fte(self, prompt_len: int, n_revised: int, row_tokens: int, n_rows: int, n_line_search: int = 0) -> float:
        """Forward-token equivalents of revising one rollout (module docstring).

        row_tokens: the Z + suffix tokens of its rows; n_line_search: its line-search forwards."""
        cfg, K = self.cfg, self.cfg.fw_steps
        bwd = 3 if self.checkpointing else 2
        V, H = self.E.shape
        prompt = prompt_len * (1 if cfg.reuse_prompt_cache else n_rows * (K * bwd + cfg.eval_final + n_line_search))
        return float(prompt + K * bwd * row_tokens + K * n_revised * V * H / self.n_params
                     + (row_tokens if cfg.eval_final else 0) + n_line_search * row_tokens)

    def revise(self, items: Sequence[ReviseItem]) -> list[ReviseResult | None]:
        """One result per item (None for a rollout too short to split), in order."""
        out: list[ReviseResult | None] = [None] * len(items)
        todo = [i for i, it in enumerate(items) if prefix_length(len(it.rollout_ids), self.cfg) > 0]
        for start in range(0, len(todo), self.cfg.revise_batch):
            idx = todo[start:start + self.cfg.revise_batch]
            was_training = self.model.training
            self.model.eval()  # transformers' own checkpointing (train mode) would drop the prompt cache
            try:
                with frozen_params(self.model):
                    batch = self._revise_batch([items[i] for i in idx])
            finally:
                self.model.train(was_training)
            for i, res in zip(idx, batch):
                out[i] = res
        return out

    # -- one batch ---------------------------------------------------------------------------
    def _autocast(self):
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _revise_batch(self, items: list[ReviseItem]) -> list[ReviseResult]:
        t0 = time.perf_counter()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        lay = batch_layout(items, self.cfg, self.tokenizer, self.template, self.device)
        prompt_cache, x_embeds = self._prefill(lay)
        state, best, trace = self._descend(lay, lambda Zc: self._objective(lay, prompt_cache, x_embeds, Zc))
        disc = self._discretize(lay, state)
        wall = time.perf_counter() - t0
        return self._pack(items, lay, state, disc, trace, best, wall, self._peak_mem_mb())

    def _prefill(self, lay: BatchLayout) -> tuple[Any, torch.Tensor]:
        """The prompts' read-only KV cache, one copy per row (None without reuse_prompt_cache), and embeddings."""
        with torch.no_grad(), self._autocast():
            x_embeds = self.E[lay.x_ids]
            if not self.cfg.reuse_prompt_cache:
                return None, x_embeds
            from transformers import DynamicCache

            try:
                kv = DynamicCache(config=self.model.config)
            except TypeError:  # older transformers
                kv = DynamicCache()
            kv = self.decoder(input_ids=lay.x_ids, attention_mask=lay.x_mask, position_ids=lay.pos_x,
                              past_key_values=kv, use_cache=True).past_key_values
            if lay.R != lay.B:  # the gold and away rows of an example share its prompt
                for layer in kv.layers:
                    layer.keys, layer.values = layer.keys[lay.rows_b], layer.values[lay.rows_b]
            return _frozen_prefix_cache(kv), x_embeds

    def _objective(self, lay: BatchLayout, prompt_cache: Any, x_embeds: torch.Tensor,
                   Zc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-example (total, gold, away) at iterate Zc [B, Lmax, H]; away is nan without the away term."""
        cfg, B, R, T_new = self.cfg, lay.B, lay.R, lay.T_new
        base = self.E[lay.tok]  # [R, T_new, H]
        Zrows = Zc[lay.rows_b].to(base.dtype)
        if T_new > lay.Lmax:
            Zrows = F.pad(Zrows, (0, 0, 0, T_new - lay.Lmax))
        emb = torch.where(lay.is_z[..., None], Zrows[:, :T_new], base)
        if prompt_cache is not None:
            hidden = self.decoder(inputs_embeds=emb, attention_mask=lay.attn, position_ids=lay.pos_new,
                                  past_key_values=prompt_cache, use_cache=True).last_hidden_state
        else:
            full = torch.cat([x_embeds[lay.rows_b], emb], dim=1)
            pos = torch.cat([lay.pos_x[lay.rows_b], lay.pos_new], dim=1)
            hidden = self.decoder(inputs_embeds=full, attention_mask=lay.attn, position_ids=pos,
                                  use_cache=False).last_hidden_state[:, lay.x_ids.shape[1]:]
        logits = self.lm_head(hidden[lay.tgt_row, lay.tgt_pos]).float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, lay.tgt_tok[:, None]).squeeze(-1)
        row_mean = lambda v: torch.zeros(R, device=v.device, dtype=v.dtype).index_add_(0, lay.tgt_row, v) / lay.n_tgt
        gold = row_mean(-logp)[:B]
        if not lay.use_away:
            return gold, gold, torch.full_like(gold, float("nan"))
        if cfg.away_form == "unlikelihood":
            away = row_mean(-torch.log1p(-logp.exp().clamp(max=1 - 1e-6)))[B:]
        else:
            away = -torch.clamp(row_mean(-logp)[B:], max=cfg.away_clip)
        if cfg.loss_terms == "away":
            return away, gold, away
        return gold + cfg.away_weight * away, gold, away

    def _descend(self, lay: BatchLayout, objective: Objective) -> tuple[FWState, Best, _Trace]:
        """K Frank-Wolfe steps from the unrevised prefix: the returned state (the best one with keep_best)."""
        cfg, K, B = self.cfg, self.cfg.fw_steps, lay.B
        state = initial_state(lay.p_ids, self.E, K)
        best = Best(torch.full((B,), math.inf, device=self.device),
                    torch.zeros(B, dtype=torch.long, device=self.device), state)
        trace = _Trace()
        emb_norm = self.E[self.allowed].float().norm(dim=-1).mean()  # step scale of the hull=False ablation
        with self._autocast(), _checkpointed_layers(self.decoder, self.checkpointing):
            for k in range(K):
                Zv = state.Z.detach().requires_grad_(True)
                total, gold, away = objective(Zv)
                (G,) = torch.autograd.grad(total.sum(), Zv)
                if cfg.keep_best:
                    best = keep_if_better(best, k, total, state)
                trace.losses(gold, away)
                with torch.no_grad():
                    s = torch.zeros((B, lay.Lmax), dtype=torch.long, device=self.device)
                    s[lay.active] = lmo(G[lay.active], self.E, cfg.oracle_chunk, self.allowed, self.oracle_dtype)
                    gamma = self._step_sizes(k, state.Z, s, lay.active, objective)
                    trace.oracle.append(s)
                    trace.gammas.append(gamma.tolist())
                    if cfg.hull:
                        state = fw_update(state, s, gamma, lay.active, self.E)
                    else:  # ablation: leave the hull; the weights keep describing p only
                        step = G / G.norm(dim=-1, keepdim=True).clamp(min=1e-12) * emb_norm
                        g = gamma[:, None] * lay.active
                        state = FWState(state.Z - g[..., None] * step, state.vids, state.vw, state.n_used)
            if cfg.eval_final:
                with torch.no_grad():
                    total, gold, away = objective(state.Z)
                    if cfg.keep_best:
                        best = keep_if_better(best, K, total, state)
                    trace.losses(gold, away)
        return (best.state if cfg.keep_best else state), best, trace

    def _step_sizes(self, k: int, Z: torch.Tensor, s: torch.Tensor, active: torch.Tensor,
                    objective: Objective) -> torch.Tensor:
        """[B] step sizes of step k: the closed-form rule, or per example the best of the line-search grid."""
        cfg, B = self.cfg, Z.shape[0]
        if cfg.step_rule != "line-search":
            return torch.full((B,), step_size(k, cfg), device=Z.device)
        e_s = self.E[s].float()
        best = torch.full((B,), math.inf, device=Z.device)
        g_b = torch.zeros(B, device=Z.device)
        for gamma in cfg.line_search_grid:
            val = objective(torch.where(active[..., None], (1 - gamma) * Z + gamma * e_s, Z))[0]
            better = val < best
            best, g_b = torch.where(better, val, best), torch.where(better, torch.full_like(g_b, gamma), g_b)
        return g_b

    def _discretize(self, lay: BatchLayout, state: FWState) -> torch.Tensor:
        """p' [B, Lmax]: per revised position the heaviest vertex, or the nearest embedding row."""
        cfg = self.cfg
        with torch.no_grad():
            if cfg.discretize == "max-weight" and cfg.hull:
                return state.vids.gather(-1, state.vw.argmax(-1, keepdim=True)).squeeze(-1)
            disc = lay.p_ids.clone()
            disc[lay.active] = nearest_tokens(state.Z[lay.active], self.E, cfg.oracle_chunk, self.allowed)
            return disc

    def _peak_mem_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # CPU: the process's peak RSS

    def _pack(self, items: list[ReviseItem], lay: BatchLayout, state: FWState, disc: torch.Tensor, trace: _Trace,
              best: Best, wall: float, peak: float) -> list[ReviseResult]:
        cfg, K, B = self.cfg, self.cfg.fw_steps, lay.B
        n_ls = K * len(cfg.line_search_grid) if cfg.step_rule == "line-search" else 0  # forwards per example
        results = []
        for b, it in enumerate(items):
            L, start = lay.prefix_lens[b], lay.starts[b]
            row_tokens = sum(L + len(lay.suffixes[r]) for r in range(b, lay.R, B))
            x_e = self.E[torch.tensor(it.prompt_ids, device=self.device)].float()
            results.append(ReviseResult(
                item=it, prefix_len=L, revise_start=start, prefix_ids=list(it.rollout_ids[:L]),
                discrete_ids=disc[b, :L].tolist(), vertex_ids=state.vids[b, :L].cpu(),
                vertex_weights=state.vw[b, :L].cpu(), iterate=state.Z[b, :L].cpu(),
                gold_loss=[step[b] for step in trace.gold],
                away_loss=[None if math.isnan(step[b]) else step[b] for step in trace.away],
                gammas=[gm[b] for gm in trace.gammas],
                oracle_ids=[h[b, start:L].tolist() for h in trace.oracle],
                prompt_embeds=torch.cat([x_e, state.Z[b, :L]], dim=0).cpu(),
                fte=float(self.fte(len(it.prompt_ids), L - start, row_tokens, lay.R // B, n_ls)),
                wall_s=wall / B, peak_mem_mb=float(peak), gold_ids=lay.golds[b],
                best_step=int(best.step[b]) if cfg.keep_best else K,
            ))
        return results
