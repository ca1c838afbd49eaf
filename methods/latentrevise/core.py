"""The LatentRevise revision core: Frank-Wolfe over the convex hull of the vocabulary embeddings.

Given a prompt x, a failed rollout y and the gold answer a*, the policy is frozen and the INPUT
EMBEDDINGS of y's reasoning prefix p (its first L tokens) are optimized:

    min_Z  Toward(x, Z) + away_weight * Away(x, Z) + fluency_weight * Fluency(x, Z)
    Z_i = sum_v w_iv e_v,  w_i on the simplex (Z_i in conv{e_v : v in vocab})

OBJECTIVES (`objective`; `loss_terms` keeps both of its terms or only one). Each gold term is a
teacher-forced loss on a suffix read after [x ; Z]; its gradient reaches Z only through the model
(dTerm/dZ), so a term can steer the prefix only as far as the frozen model lets the suffix depend
on the prefix.
- "gold-after-prefix" (the first reading): Toward = NLL of the answer sentence
  " The answer is \\boxed{a*}." right after Z (gradient: make the model state a* right now);
  Away = unlikelihood of the failed continuation c, mean_t -log(1 - p(c_t)) over its first
  `away_max_tokens` tokens (gradient: make the failed reasoning itself unlikely).
- "gold-in-rollout": the failed continuation is kept as context and only its final answer changes:
  Toward = NLL of a* in place of the rollout's last \\boxed{...} content, after c up to that box
  (gradient: "make THIS reasoning end in a*"); Away = unlikelihood of the wrong answer span only
  (the away term restricted to the failed answer). Without a box in c: Toward = NLL of the answer
  sentence appended to the whole of c, no Away.
- "self-contrast": the item's `contrast` rows, the model's own continuations of the UNREVISED
  prefix p (mining samples them anyway for the K=0 control arm), graded against a* by the caller:
  Toward = mean NLL of the correct ones (gradient: make the prefix lead to what the model itself
  wrote when it got it right), Away = mean unlikelihood of the wrong ones; up to `contrast_max` of
  each. When none is correct the example falls back to `contrast_fallback`.
- "fluency": no gold term at all, only the fluency term below (the gold answer then enters only
  through verification of the continuations).
- Fluency (`fluency_weight`, added to any objective): the model's own cross-entropy of the revised positions,
  mean_i -sum_v w_iv log p(v | x, Z_<i). Its gradient over the weights has a part through the
  embeddings (later positions' predictions) and a DIRECT part, -log p(v | x, Z_<i) for every vertex
  v, which the oracle adds to <G_i, e_v>: the step moves a position toward tokens the model itself
  finds likely in that context (it repairs a sampled slip; it uses no gold information).
The away form (`away_form`) is unlikelihood or a clipped NLL, -min(NLL(c), clip), both bounded so
that pushing away cannot dominate.

FRANK-WOLFE keeps every iterate inside the hull without projections: per position the linear
minimization oracle picks the vertex s_i = argmin_v <G_i, e_v> (+ the direct term) and
z_i <- (1 - g) z_i + g e_{s_i}. Per position we keep the sparse convex weights over the vertices
used so far (at most K+1: the original token plus one per step), the exact representation of the
iterate and the record of which tokens the revision moved toward. The per-position Frank-Wolfe
gap gap_i = <dObj/dw_i, w_i - e_{s_i}> >= 0 is the linearized gain of moving position i fully to
s_i. STEP RULES (`step_rule`) and their effect on the discrete prefix p' (max-weight discretization):
- "harmonic" g_k = 2/(k+3) at every revised position (the textbook 2/(k+2) has g_0 = 1, which throws
  the original prefix away at the first step); the original token keeps weight prod_k (1 - g_k) =
  2/((K+1)(K+2)): 1.5 % after K=10, so p' follows the last oracle picks at ~every position.
- "const" g = `step_const` everywhere: the original keeps (1 - g)^K, so p' = p while (1-g)^K > 1/2
  (0.9^3 = 0.73: the old tiny setting never changed p').
- "line-search": per example the best g of `line_search_grid` by the true objective.
- "gap-topm": only the `flip_positions` (M) positions with the largest gap move, by `flip_gamma`;
  with flip_gamma > 1/2 their heaviest vertex becomes the oracle's pick, so at most M tokens of p'
  change per step (M*K in all); flip_gamma = 1 keeps Z a vertex (Z = E[p'] exactly).
- "gcg": GCG-like: the `gcg_candidates` positions with the largest gap each propose their oracle
  vertex as a full flip; every candidate is evaluated by the TRUE objective (one forward each) and the
  best one is taken if it lowers the objective, else nothing moves: at most one token of p' changes
  per step, the objective never rises, Z stays a vertex.
The oracle is CHUNKED over the vocabulary (`oracle_chunk` rows of E at a time): N x chunk scores,
never B x L x V; special tokens and embedding rows past the tokenizer are never picked. The
`discretize` rule maps the final weights to p': the heaviest vertex, the nearest embedding row, or
a draw from the weights ("sample", seeded per item).

DEFAULTS (chosen by measurement on the tiny preset, repro/presets.py _TINY_REVISE has the numbers):
objective "fluency" with step rule "gap-topm", M=1. bench/planted.py plants a wrong digit in the first
step's result: the fluency term puts the right digit back in 84 % of 200 cases (chance 10 %), every
gold term alone in 0-6 %. On 235 zero-hit prompts (scripts/revise_measure.py) every gold term alone makes
free continuations from p' significantly LESS often usable (correct, clean, true steps) than from p
(-0.9 to -2.6 points), and adding gold terms to fluency changes nothing measurable; with longer
prefixes they raise raw accuracy only by writing answer digits or false arithmetic into p'. Read:
on this model the gold answer is no guide for the revision, the model's own likelihood is.

Other choices, as `ReviseConfig` fields:
- cost: the prompt is run once per batch and its KV cache reused by all K steps through a
  read-only cache layer (`_FrozenPrefixLayer`: it attends over the cached prompt but never grows).
  The objective's rows (one per suffix: answer sentence, failed continuation, contrast samples)
  share that cache; Z is run once per row.
- `keep_best`: the objective is not convex, so the iterate with the lowest objective among the K+1
  evaluated ones is returned (the original prefix included), at no extra cost. Needs eval_final.
- logits only at the loss positions and, with fluency, at the revised positions.
- GPU: bf16 autocast (the iterate and the weights stay float32) and per-layer activation
  checkpointing (our own wrapper; transformers' drops the cache). CPU: float32, no checkpointing.
- the policy is frozen inside `frozen_params` (requires_grad_(False), restored afterwards): no
  parameter ever receives a gradient and there is no optimizer.

One batch, in `Reviser._revise_batch`: `batch_layout` turns the items' objective rows
(`objective_rows`) into padded rows and loss targets (`BatchLayout`), the prompt cache is filled
once (`_prefill`), then K times: the objective and its gradient (`_objective`), the oracle and the
gap (`_oracle`), the move (`_move`: step sizes, gap selection or the GCG candidates) and
`fw_update`, a pure function of the state (`FWState`) testable on hand-made tensors;
`keep_if_better` tracks the best iterate. Last, discretization and packing into `ReviseResult`s.

COMPUTE is counted in forward-token equivalents (FTE): a forward over T tokens = T, a forward plus
input-gradient backward (frozen weights: no weight gradients) = 2T, +T with checkpointing, one
vocabulary-wide matmul for one position (oracle, fluency logits) = V*H / P (its FLOPs in units of
one token's 2P-FLOP forward, P = parameter count). A batch is charged what it really computes:
the PADDED rows (R x T_new per pass) and prompts (B x Tx), split over its examples in proportion
to their unpadded tokens (`Reviser.batch_fte`, also used to predict the cost of a revision before
running it, for the matched-compute baselines).
"""

from __future__ import annotations

import math
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F

from harness.config import check_choices

DEFAULT_GOLD_TEMPLATE = " The final answer is \\boxed{{answer}}."  # "{answer}" is replaced
TINY_GOLD_TEMPLATE = " The answer is \\boxed{{answer}}."  # the arith solutions' own closing sentence

Objective = Literal["gold-after-prefix", "gold-in-rollout", "self-contrast", "fluency"]
Fallback = Literal["gold-after-prefix", "gold-in-rollout"]
StepRule = Literal["harmonic", "const", "line-search", "gap-topm", "gcg"]
LossTerms = Literal["both", "gold", "away"]
AwayForm = Literal["unlikelihood", "clipped-nll"]
Discretize = Literal["max-weight", "nearest", "sample"]
OracleDtype = Literal["model", "float32"]
VERTEX_MOVES = ("gap-topm", "gcg")  # step rules that move whole positions to one vertex


@dataclass
class ReviseConfig:
    # prefix split: L = clamp(round(prefix_frac * |y|), prefix_min_tokens, prefix_max_tokens), < |y|
    prefix_frac: float = 0.5
    prefix_max_tokens: int | None = 256
    prefix_min_tokens: int = 1
    prefix_len: int | None = None  # a fixed L (still < |y|); overrides prefix_frac
    revise_last: int | None = None  # M: revise only the last M prefix positions (None = all L)
    fw_steps: int = 10  # K
    step_rule: StepRule = "gap-topm"  # harmonic | const | line-search | gap-topm | gcg (docstring: effect on p')
    step_const: float = 0.3
    line_search_grid: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    flip_positions: int = 1  # gap-topm: positions moved per step (largest Frank-Wolfe gap first)
    flip_gamma: float = 1.0  # gap-topm: their step (> 0.5 flips the heaviest vertex; 1.0 keeps Z a vertex)
    gcg_candidates: int = 4  # gcg: single-position flips evaluated by the true objective per step
    hull: bool = True  # False (ablation): unconstrained normalized-gradient steps, p' by nearest token
    # objective
    objective: Objective = "fluency"  # module docstring: what each one's gradients say; the default: DEFAULTS
    loss_terms: LossTerms = "both"  # both: toward + away_weight*away | gold (toward only) | away
    contrast_fallback: Fallback = "gold-in-rollout"  # self-contrast without a correct contrast sample
    contrast_max: int = 4  # self-contrast: correct (toward) and wrong (away) samples used, each
    fluency_weight: float = 1.0  # weight of the prefix's own cross-entropy under the model (docstring)
    gold_template: str | None = None  # None: TINY_GOLD_TEMPLATE for the tiny-boxed template, else DEFAULT
    away_weight: float = 0.5
    away_form: AwayForm = "unlikelihood"  # unlikelihood: mean -log(1-p) | clipped-nll: -min(NLL, away_clip)
    away_clip: float = 5.0  # nats per token (clipped-nll)
    away_max_tokens: int | None = 128  # first tokens of a continuation a row sees (failed one, contrast samples)
    # oracle and discretization
    oracle_chunk: int = 16384  # vocabulary rows per chunk of G E^T
    oracle_dtype: OracleDtype = "model"  # model: matmul in the model dtype | float32
    exclude_special: bool = True
    discretize: Discretize = "max-weight"  # max-weight: heaviest vertex | nearest: nearest row | sample
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
            ("flip_positions", self.flip_positions >= 1, ">= 1"),
            ("flip_gamma", 0 < self.flip_gamma <= 1, "in (0, 1]"),
            ("gcg_candidates", self.gcg_candidates >= 1, ">= 1"),
            ("contrast_max", self.contrast_max >= 1, ">= 1"),
            ("fluency_weight", self.fluency_weight >= 0, ">= 0"),
            ("objective", self.objective != "fluency" or self.fluency_weight > 0,
             "not 'fluency' when fluency_weight is 0"),
            ("hull", self.hull or (self.step_rule not in VERTEX_MOVES and self.fluency_weight == 0
                                   and self.discretize != "sample"),
             "True for gap-topm, gcg, fluency_weight > 0 and discretize='sample' (they act on the weights)"),
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

    @property
    def use_toward(self) -> bool:
        return self.loss_terms in ("both", "gold")

    @property
    def use_away(self) -> bool:
        return self.loss_terms == "away" or (self.loss_terms == "both" and self.away_weight > 0)

    def evals_per_step(self) -> int:
        """Extra forwards per step of the step rule (line-search grid points, GCG candidates)."""
        return {"line-search": len(self.line_search_grid), "gcg": self.gcg_candidates}.get(self.step_rule, 0)


@dataclass
class ReviseItem:
    prompt_ids: list[int]
    rollout_ids: list[int]
    gold: str
    key: Any = None
    contrast: list[tuple[list[int], bool]] | None = None  # self-contrast: (continuation ids of p, correct)
    seed: int = 0  # discretize="sample"


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
    gold_loss: list[float | None]  # the toward term at iterates 0..K (K+1 values when eval_final)
    away_loss: list[float | None]
    gammas: list[float]
    oracle_ids: list[list[int]]  # per step, the oracle's vertex for each revised position
    prompt_embeds: torch.Tensor  # [|x| + L, H] float32 on CPU: continuation input
    fte: float
    wall_s: float
    peak_mem_mb: float | None
    objective: str = ""  # the objective this example used ("none": no term applied, not revised)
    fluency_loss: list[float | None] = field(default_factory=list)
    moves: list[int] = field(default_factory=list)  # per step, positions whose weights moved
    best_step: int = 0  # which iterate (0..K) was returned; K unless keep_best picked an earlier one

    @property
    def changed_frac(self) -> float:
        """Share of the revised positions whose discrete token changed (p'_i != p_i)."""
        new, old = self.discrete_ids[self.revise_start:], self.prefix_ids[self.revise_start:]
        return sum(a != b for a, b in zip(new, old)) / max(1, len(old))

    @property
    def is_vertex(self) -> bool:
        """Z is exactly E[p'] (every position on one vertex): a latent continuation is a discrete one."""
        w = self.vertex_weights[self.revise_start:self.prefix_len]
        return w.numel() == 0 or bool((w.max(-1).values >= 1 - 1e-6).all())

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
    raise ValueError(f"step_rule {cfg.step_rule!r} has no closed form (it is chosen per example)")


def answer_span(text: str) -> tuple[int, int] | None:
    """Character span of the content of the last \\boxed{...} in `text` (nested braces matched)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return (i, j) if j > i else None
    return None


# ------------------------------------------------------------------------------------------------
# the objective's rows: which suffixes are teacher-forced after [x ; Z], and which tokens are targets
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    suffix: list[int]  # token ids after Z
    start: int  # loss targets: suffix[start:end]
    end: int
    away: bool  # an away row (unlikelihood / clipped NLL) or a toward row (NLL)


def _distinct(seqs: Sequence[list[int]], cap: int | None) -> list[list[int]]:
    out: list[list[int]] = []
    for s in seqs:
        s = s[:cap]
        if s and s not in out:
            out.append(s)
    return out


def objective_rows(item: ReviseItem, L: int, cfg: ReviseConfig, tokenizer: Any,
                   template: str | None) -> tuple[str, list[Row]]:
    """(objective used, rows) of one example: the module docstring's terms as teacher-forced rows."""
    enc = lambda s: tokenizer(s, add_special_tokens=False).input_ids
    toward, away, name = cfg.use_toward, cfg.use_away, cfg.objective
    rows: list[Row] = []
    if name == "fluency":
        return name, rows
    if name == "self-contrast":
        good = _distinct([ids for ids, ok in item.contrast or [] if ok], cfg.away_max_tokens)[: cfg.contrast_max]
        if good:
            bad = _distinct([ids for ids, ok in item.contrast or [] if not ok], cfg.away_max_tokens)[: cfg.contrast_max]
            rows = ([Row(s, 0, len(s), False) for s in good] if toward else []) + \
                   ([Row(s, 0, len(s), True) for s in bad] if away else [])
            return name, rows
        name = cfg.contrast_fallback
    cont = list(item.rollout_ids[L:])
    if name == "gold-after-prefix":
        g, a = enc(gold_text(item.gold, cfg, template)), cont[: cfg.away_max_tokens]
        return name, ([Row(g, 0, len(g), False)] if toward else []) + ([Row(a, 0, len(a), True)] if away and a else [])
    text = tokenizer.decode(cont, skip_special_tokens=True)
    span = answer_span(text)
    if span is None:  # no answer to swap: the answer sentence after the whole failed continuation
        c, g = enc(text), enc(gold_text(item.gold, cfg, template))
        return name, [Row(c + g, len(c), len(c) + len(g), False)] if toward else []
    pre, gold_ids, wrong = enc(text[: span[0]]), enc(item.gold.strip()), enc(text[span[0]:span[1]])
    if toward:
        rows.append(Row(pre + gold_ids, len(pre), len(pre) + len(gold_ids), False))
    if away and wrong:
        rows.append(Row(pre + wrong, len(pre), len(pre) + len(wrong), True))
    return name, rows


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
        dtype: torch.dtype | None = None, direct: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_v <grad_n, E_v> (+ direct[n, v]) for each row n of grad [N, H]; E [V, H]. Extra memory O(N * chunk).

    `direct` [N, V]: the part of the objective's gradient over the convex weights that does not go
    through the embeddings (the fluency term's -log p(v | context), core docstring)."""
    dtype = dtype or E.dtype
    g = grad.to(dtype)
    best_val = torch.full((g.shape[0],), math.inf, device=g.device, dtype=torch.float32)
    best_idx = torch.zeros(g.shape[0], dtype=torch.long, device=g.device)
    for start in range(0, E.shape[0], chunk):
        scores = (g @ E[start:start + chunk].to(dtype).T).float()
        if direct is not None:
            scores += direct[:, start:start + chunk]
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
# one batch's layout: B examples as R rows (each example's objective rows) sharing the prompt
# ------------------------------------------------------------------------------------------------

@dataclass
class BatchLayout:
    """The padded tensors of one batch. Row r belongs to example rows_b[r]; its new part (after the
    left-padded prompt) is [Z_b (L_b positions) ; suffix], right-padded to T_new. Every example has
    at least one row (a target-free carrier row when its objective gives none), `z_row[b]` the first."""

    prefix_lens: list[int]  # L per example
    starts: list[int]  # first revised position per example (L - M, or 0)
    objectives: list[str]  # the objective each example uses ("none": no term, not revised)
    suffixes: list[list[int]]  # per row
    x_ids: torch.Tensor  # [B, Tx] left-padded prompts
    x_mask: torch.Tensor  # [B, Tx]
    pos_x: torch.Tensor  # [B, Tx] the prompts' position ids
    rows_b: torch.Tensor  # [R] each row's example
    row_kind: torch.Tensor  # [R] 0 toward, 1 away, 2 carrier (no targets)
    row_w: torch.Tensor  # [R] float: 1 / (rows of its kind in its example)
    z_row: torch.Tensor  # [B] a row of each example (its hidden states over Z serve the fluency term)
    tok: torch.Tensor  # [R, T_new] the suffix ids (padding over the Z positions)
    is_z: torch.Tensor  # [R, T_new] True at the Z positions
    pos_new: torch.Tensor  # [R, T_new] position ids, continuing each row's prompt
    attn: torch.Tensor  # [R, Tx + T_new]
    tgt_row: torch.Tensor  # [N] per loss target: its row,
    tgt_pos: torch.Tensor  # [N] the position whose hidden state predicts it,
    tgt_tok: torch.Tensor  # [N] and the token
    n_tgt: torch.Tensor  # [R] float: targets per row (>= 1 to divide by)
    p_ids: torch.Tensor  # [B, Lmax] the prefixes, padded
    active: torch.Tensor  # [B, Lmax] bool: the revised positions
    tokens: list[int]  # per example, unpadded prompt + row tokens (its share of the batch's cost)

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

    def has(self, kind: int) -> torch.Tensor:
        """[B] bool: the example has a row of this kind."""
        return torch.zeros(self.B, dtype=torch.bool, device=self.rows_b.device).index_fill_(
            0, self.rows_b[self.row_kind == kind], True)


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
    names, rows, row_b = [], [], []
    for b, (it, L) in enumerate(zip(items, Ls)):
        name, ex_rows = objective_rows(it, L, cfg, tokenizer, template)
        if not ex_rows:
            name = name if cfg.fluency_weight > 0 else "none"
            ex_rows = [Row([], 0, 0, False)]  # carries Z for the fluency term; no targets
        names.append(name)
        rows += ex_rows
        row_b += [b] * len(ex_rows)
    R, Lmax = len(rows), max(Ls)
    row_L = [Ls[b] for b in row_b]
    T_new = max(L + len(r.suffix) for L, r in zip(row_L, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    x_ids, x_mask = _left_padded([it.prompt_ids for it in items], pad)
    x_ids, x_mask = x_ids.to(dev), x_mask.to(dev)
    rows_b = torch.tensor(row_b, device=dev)
    kind = torch.tensor([2 if r.end == r.start else int(r.away) for r in rows], device=dev)
    count = {(b, k): 0 for b in range(B) for k in range(3)}
    for b, k in zip(row_b, kind.tolist()):
        count[b, k] += 1
    tok = torch.full((R, T_new), pad, dtype=torch.long)
    new_mask = torch.zeros((R, T_new), dtype=torch.long)
    tgt_row, tgt_pos, tgt_tok = [], [], []
    for r, (L, row) in enumerate(zip(row_L, rows)):
        s = row.suffix
        tok[r, L:L + len(s)] = torch.tensor(s, dtype=torch.long)
        new_mask[r, : L + len(s)] = 1
        tgt_row += [r] * (row.end - row.start)
        tgt_pos += list(range(L - 1 + row.start, L - 1 + row.end))  # the hidden state that predicts each target
        tgt_tok += s[row.start:row.end]
    tok, new_mask = tok.to(dev), new_mask.to(dev)
    tgt_row_t = torch.tensor(tgt_row, device=dev, dtype=torch.long)
    p_ids = torch.full((B, Lmax), pad, dtype=torch.long)
    for b, (it, L) in enumerate(zip(items, Ls)):
        p_ids[b, :L] = torch.tensor(it.rollout_ids[:L])
    ar = torch.arange(Lmax, device=dev)[None, :]
    revised = torch.tensor([n != "none" for n in names], device=dev)[:, None]
    return BatchLayout(
        prefix_lens=Ls, starts=starts, objectives=names, suffixes=[r.suffix for r in rows],
        x_ids=x_ids, x_mask=x_mask, pos_x=(x_mask.cumsum(-1) - 1).clamp(min=0), rows_b=rows_b, row_kind=kind,
        row_w=torch.tensor([1.0 / count[b, k] for b, k in zip(row_b, kind.tolist())], device=dev),
        z_row=torch.tensor([row_b.index(b) for b in range(B)], device=dev), tok=tok,
        is_z=torch.arange(T_new, device=dev)[None, :] < torch.tensor(row_L, device=dev)[:, None],
        pos_new=x_mask.sum(-1)[rows_b, None] + torch.arange(T_new, device=dev)[None, :],
        attn=torch.cat([x_mask[rows_b], new_mask], dim=1),
        tgt_row=tgt_row_t, tgt_pos=torch.tensor(tgt_pos, device=dev, dtype=torch.long),
        tgt_tok=torch.tensor(tgt_tok, device=dev, dtype=torch.long),
        n_tgt=torch.zeros(R, device=dev).index_add_(0, tgt_row_t, torch.ones(len(tgt_row), device=dev)).clamp(min=1),
        p_ids=p_ids.to(dev),
        active=(ar < torch.tensor(Ls, device=dev)[:, None]) & (ar >= torch.tensor(starts, device=dev)[:, None])
        & revised,
        tokens=[len(it.prompt_ids) + sum(L + len(r.suffix) for r, rb in zip(rows, row_b) if rb == b)
                for b, (it, L) in enumerate(zip(items, Ls))],
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
class ObjOut:
    """The objective at one iterate, per example [B] (nan where a term does not apply)."""

    total: torch.Tensor
    toward: torch.Tensor
    away: torch.Tensor
    fluency: torch.Tensor
    direct: torch.Tensor | None = None  # [N_active, V]: the fluency term's direct gradient over the weights


@dataclass
class _Trace:
    """What the descent records for the results, per example."""

    toward: list[list[float]] = field(default_factory=list)  # per evaluated iterate
    away: list[list[float]] = field(default_factory=list)
    fluency: list[list[float]] = field(default_factory=list)
    gammas: list[list[float]] = field(default_factory=list)  # per step
    moves: list[list[int]] = field(default_factory=list)  # per step: positions moved
    oracle: list[torch.Tensor] = field(default_factory=list)  # per step, [B, Lmax]

    def losses(self, out: ObjOut) -> None:
        self.toward.append(out.toward.detach().tolist())
        self.away.append(out.away.detach().tolist())
        self.fluency.append(out.fluency.detach().tolist())


# ------------------------------------------------------------------------------------------------
# the reviser
# ------------------------------------------------------------------------------------------------

Objectivefn = Callable[..., ObjOut]  # (state, direct=False) -> ObjOut


def _nan_to_none(v: float) -> float | None:
    return None if math.isnan(v) else v


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

    # -- compute ------------------------------------------------------------------------------
    def fte(self, prompt_len: int, n_revised: int, row_tokens: int, n_rows: int, n_line_search: int = 0,
            n_prompts: int = 1) -> float:
        """Forward-token equivalents of a revision (module docstring): one rollout, or a padded batch
        (prompt_len = Tx, n_prompts = B, row_tokens = R * T_new, n_rows = R, n_revised = revised positions).

        n_line_search: extra forwards over the rows (line-search grid points, GCG candidates), all steps."""
        cfg, K = self.cfg, self.cfg.fw_steps
        bwd = 3 if self.checkpointing else 2
        V, H = self.E.shape
        passes = K * bwd + cfg.eval_final + n_line_search  # passes over the rows, in forward units
        prompt = prompt_len * (n_prompts if cfg.reuse_prompt_cache else n_rows * passes)
        vocab_row = n_revised * V * H / self.n_params  # one vocabulary-wide matmul at every revised position
        fluency = passes * vocab_row if cfg.fluency_weight > 0 else 0.0
        return float(prompt + passes * row_tokens + K * vocab_row + fluency)

    def batch_fte(self, lay: BatchLayout) -> list[float]:
        """Each example's share of what its padded batch computes, in proportion to its unpadded tokens."""
        total = self.fte(lay.x_ids.shape[1], int(lay.active.sum()), lay.R * lay.T_new, lay.R,
                         self.cfg.fw_steps * self.cfg.evals_per_step(), n_prompts=lay.B)
        return [total * t / sum(lay.tokens) for t in lay.tokens]

    def predict_fte(self, items: Sequence[ReviseItem]) -> list[float]:
        """What `revise(items)` will be charged per item (0 for one too short to split), without running
        the model: the same batches and layouts (self-contrast items without `contrast` are laid out with
        the fallback objective's rows)."""
        out = [0.0] * len(items)
        todo = [i for i, it in enumerate(items) if prefix_length(len(it.rollout_ids), self.cfg) > 0]
        for start in range(0, len(todo), self.cfg.revise_batch):
            idx = todo[start:start + self.cfg.revise_batch]
            lay = batch_layout([items[i] for i in idx], self.cfg, self.tokenizer, self.template, torch.device("cpu"))
            for i, f in zip(idx, self.batch_fte(lay)):
                out[i] = f
        return out

    # -- entry point --------------------------------------------------------------------------
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
        prompt_cache, x_embeds, h_last = self._prefill(lay)
        objective = lambda st, direct=False: self._objective(lay, prompt_cache, x_embeds, h_last, st, direct)
        state, best, trace = self._descend(lay, objective)
        disc = self._discretize(lay, state, items)
        wall = time.perf_counter() - t0
        return self._pack(items, lay, state, disc, trace, best, wall, self._peak_mem_mb())

    def _prefill(self, lay: BatchLayout) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """The prompts' read-only KV cache, one copy per row (None without reuse_prompt_cache), their
        embeddings, and the last prompt position's hidden state per example (it predicts Z's first token)."""
        with torch.no_grad(), self._autocast():
            x_embeds = self.E[lay.x_ids]
            if not self.cfg.reuse_prompt_cache:
                h = (self.decoder(input_ids=lay.x_ids, attention_mask=lay.x_mask, position_ids=lay.pos_x,
                                  use_cache=False).last_hidden_state[:, -1] if self.cfg.fluency_weight > 0 else
                     torch.zeros(lay.B, self.E.shape[1], device=self.device))
                return None, x_embeds, h
            from transformers import DynamicCache

            try:
                kv = DynamicCache(config=self.model.config)
            except TypeError:  # older transformers
                kv = DynamicCache()
            out = self.decoder(input_ids=lay.x_ids, attention_mask=lay.x_mask, position_ids=lay.pos_x,
                               past_key_values=kv, use_cache=True)
            kv = out.past_key_values
            if lay.R != lay.B or not torch.equal(lay.rows_b, torch.arange(lay.B, device=self.device)):
                for layer in kv.layers:  # every row attends over its example's prompt
                    layer.keys, layer.values = layer.keys[lay.rows_b], layer.values[lay.rows_b]
            return _frozen_prefix_cache(kv), x_embeds, out.last_hidden_state[:, -1]

    def _hidden(self, lay: BatchLayout, prompt_cache: Any, x_embeds: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        """[R, T_new, H]: the decoder's hidden states over each row's [Z ; suffix]."""
        base = self.E[lay.tok]  # [R, T_new, H]
        Zrows = Z[lay.rows_b].to(base.dtype)
        if lay.T_new > lay.Lmax:
            Zrows = F.pad(Zrows, (0, 0, 0, lay.T_new - lay.Lmax))
        emb = torch.where(lay.is_z[..., None], Zrows[:, :lay.T_new], base)
        if prompt_cache is not None:
            return self.decoder(inputs_embeds=emb, attention_mask=lay.attn, position_ids=lay.pos_new,
                                past_key_values=prompt_cache, use_cache=True).last_hidden_state
        full = torch.cat([x_embeds[lay.rows_b], emb], dim=1)
        pos = torch.cat([lay.pos_x[lay.rows_b], lay.pos_new], dim=1)
        return self.decoder(inputs_embeds=full, attention_mask=lay.attn, position_ids=pos,
                            use_cache=False).last_hidden_state[:, lay.x_ids.shape[1]:]

    def _objective(self, lay: BatchLayout, prompt_cache: Any, x_embeds: torch.Tensor, h_last: torch.Tensor,
                   state: FWState, direct: bool = False) -> ObjOut:
        """The objective at `state` (its Z, and its weights for the fluency term), per example."""
        cfg, B = self.cfg, lay.B
        hidden = self._hidden(lay, prompt_cache, x_embeds, state.Z)
        nan = torch.full((B,), float("nan"), device=self.device)
        per_ex = lambda v, kind: torch.zeros(B, device=v.device, dtype=v.dtype).index_add_(
            0, lay.rows_b, v * lay.row_w * (lay.row_kind == kind))
        total = torch.zeros(B, device=self.device)
        toward = away = nan
        if len(lay.tgt_tok):
            logits = self.lm_head(hidden[lay.tgt_row, lay.tgt_pos]).float()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, lay.tgt_tok[:, None]).squeeze(-1)
            row_mean = lambda v: torch.zeros(lay.R, device=v.device, dtype=v.dtype).index_add_(
                0, lay.tgt_row, v) / lay.n_tgt
            nll = row_mean(-logp)
            if cfg.away_form == "unlikelihood":
                push = row_mean(-torch.log1p(-logp.exp().clamp(max=1 - 1e-6)))
            else:
                push = -torch.clamp(nll, max=cfg.away_clip)
            has_t, has_a = lay.has(0), lay.has(1)
            toward_v, away_v = per_ex(nll, 0), per_ex(push, 1)
            total = total + toward_v + (cfg.away_weight if cfg.loss_terms == "both" else 1.0) * away_v
            toward, away = torch.where(has_t, toward_v, nan), torch.where(has_a, away_v, nan)
        fluency, D = nan, None
        if cfg.fluency_weight > 0:
            fluency_v, D = self._fluency(lay, hidden, h_last, state, direct)
            total = total + cfg.fluency_weight * fluency_v
            fluency = torch.where(lay.active.any(-1), fluency_v, nan)
        return ObjOut(total, toward, away, fluency, D)

    def _fluency(self, lay: BatchLayout, hidden: torch.Tensor, h_last: torch.Tensor, state: FWState,
                 direct: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B] mean over revised positions of -sum_v w_iv log p(v | x, Z_<i), and its direct gradient [N, V]."""
        b, i = lay.active.nonzero(as_tuple=True)
        prev = hidden[lay.z_row[b], (i - 1).clamp(min=0)]
        h = torch.where((i == 0)[:, None], h_last[b].to(prev.dtype), prev)  # position 0: the prompt's last state
        logp = torch.log_softmax(self.lm_head(h).float(), dim=-1)  # [N, V]
        ce = -(state.vw[b, i] * logp.gather(-1, state.vids[b, i])).sum(-1)
        n_pos = lay.active.sum(-1).clamp(min=1).float()
        value = torch.zeros(lay.B, device=ce.device).index_add_(0, b, ce) / n_pos
        D = -(self.cfg.fluency_weight / n_pos[b])[:, None] * logp.detach() if direct else None
        return value, D

    def _descend(self, lay: BatchLayout, objective: Objectivefn) -> tuple[FWState, Best, _Trace]:
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
                out = objective(replace(state, Z=Zv), direct=True)
                if out.total.requires_grad:
                    (G,) = torch.autograd.grad(out.total.sum(), Zv, allow_unused=True)
                else:  # no term depends on Z (e.g. fluency of a one-token prefix): only the direct term moves it
                    G = None
                G = torch.zeros_like(Zv) if G is None else G
                if cfg.keep_best:
                    best = keep_if_better(best, k, out.total, state)
                trace.losses(out)
                with torch.no_grad():
                    s, gap = self._oracle(lay, G, out.direct, state)
                    trace.oracle.append(s)
                    if not cfg.hull:  # ablation: leave the hull; the weights keep describing p only
                        gamma = self._step_sizes(k, state, s, lay.active, objective)
                        step = G / G.norm(dim=-1, keepdim=True).clamp(min=1e-12) * emb_norm
                        g = gamma[:, None] * lay.active
                        state = FWState(state.Z - g[..., None] * step, state.vids, state.vw, state.n_used)
                        trace.gammas.append(gamma.tolist())
                        trace.moves.append(lay.active.sum(-1).tolist())
                        continue
                    gamma, move = self._move(k, lay, state, s, gap, out.total, objective)
                    trace.gammas.append(gamma.tolist())
                    trace.moves.append((move & (gamma[:, None] > 0)).sum(-1).tolist())
                    state = fw_update(state, s, gamma, move, self.E)
            if cfg.eval_final:
                with torch.no_grad():
                    out = objective(state)
                    if cfg.keep_best:
                        best = keep_if_better(best, K, out.total, state)
                    trace.losses(out)
        return (best.state if cfg.keep_best else state), best, trace

    def _oracle(self, lay: BatchLayout, G: torch.Tensor, D: torch.Tensor | None,
                state: FWState) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, Lmax] the oracle's vertex and the Frank-Wolfe gap per revised position (0 elsewhere)."""
        B, Lmax = lay.B, lay.Lmax
        s = torch.zeros((B, Lmax), dtype=torch.long, device=self.device)
        gap = torch.zeros((B, Lmax), device=self.device)
        if not lay.active.any():
            return s, gap
        Ga = G[lay.active].float()
        s_a = lmo(G[lay.active], self.E, self.cfg.oracle_chunk, self.allowed, self.oracle_dtype, direct=D)
        gap_a = (Ga * (state.Z[lay.active] - self.E[s_a].float())).sum(-1)
        if D is not None:
            w, v = state.vw[lay.active], state.vids[lay.active]
            gap_a = gap_a + (w * D.gather(-1, v)).sum(-1) - D.gather(-1, s_a[:, None]).squeeze(-1)
        s[lay.active], gap[lay.active] = s_a, gap_a
        return s, gap

    def _move(self, k: int, lay: BatchLayout, state: FWState, s: torch.Tensor, gap: torch.Tensor,
              current: torch.Tensor, objective: Objectivefn) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma [B], positions that move [B, Lmax]) of step k under the step rule (module docstring)."""
        cfg, B = self.cfg, lay.B
        if cfg.step_rule not in VERTEX_MOVES:
            return self._step_sizes(k, state, s, lay.active, objective), lay.active
        live = lay.active & (gap > 1e-7)  # a position already on its oracle vertex has nothing to gain
        order = gap.masked_fill(~live, -math.inf).argsort(dim=-1, descending=True)
        if cfg.step_rule == "gap-topm":
            top = torch.zeros_like(live).scatter_(1, order[:, : cfg.flip_positions], True) & live
            return torch.full((B,), cfg.flip_gamma, device=self.device), top
        # gcg: the best single flip among the candidates, by the true objective, if it improves
        best_val, move = current.detach().clone(), torch.zeros_like(live)
        ones = torch.ones(B, device=self.device)
        for j in range(min(cfg.gcg_candidates, lay.Lmax)):
            cand = torch.zeros_like(live).scatter_(1, order[:, j:j + 1], True) & live
            if not cand.any():
                break
            val = objective(fw_update(state, s, ones, cand, self.E)).total
            better = (val < best_val) & cand.any(-1)
            best_val = torch.where(better, val, best_val)
            move = torch.where(better[:, None], cand, move)
        return ones * move.any(-1), move

    def _step_sizes(self, k: int, state: FWState, s: torch.Tensor, active: torch.Tensor,
                    objective: Objectivefn) -> torch.Tensor:
        """[B] step sizes of step k: the closed-form rule, or per example the best of the line-search grid."""
        cfg, B = self.cfg, state.Z.shape[0]
        if cfg.step_rule != "line-search":
            return torch.full((B,), step_size(k, cfg), device=state.Z.device)
        best = torch.full((B,), math.inf, device=state.Z.device)
        g_b = torch.zeros(B, device=state.Z.device)
        for gamma in cfg.line_search_grid:
            trial = torch.full((B,), gamma, device=state.Z.device)
            val = objective(fw_update(state, s, trial, active, self.E)).total
            better = val < best
            best, g_b = torch.where(better, val, best), torch.where(better, trial, g_b)
        return g_b

    def _discretize(self, lay: BatchLayout, state: FWState, items: Sequence[ReviseItem]) -> torch.Tensor:
        """p' [B, Lmax]: per revised position the heaviest vertex, a draw from the weights, or the nearest row."""
        cfg = self.cfg
        with torch.no_grad():
            if cfg.discretize == "max-weight" and cfg.hull:
                return state.vids.gather(-1, state.vw.argmax(-1, keepdim=True)).squeeze(-1)
            disc = lay.p_ids.clone()
            if cfg.discretize == "sample":
                for b, it in enumerate(items):  # one generator per item: p' does not depend on the batch
                    gen = torch.Generator(device="cpu").manual_seed(it.seed)
                    pos = lay.active[b].nonzero().squeeze(-1)
                    if len(pos):
                        pick = torch.multinomial(state.vw[b, pos].cpu().clamp(min=0), 1, generator=gen).squeeze(-1)
                        disc[b, pos] = state.vids[b, pos].gather(-1, pick.to(self.device)[:, None]).squeeze(-1)
                return disc
            if lay.active.any():
                disc[lay.active] = nearest_tokens(state.Z[lay.active], self.E, cfg.oracle_chunk, self.allowed)
            return disc

    def _peak_mem_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # CPU: the process's peak RSS

    def _pack(self, items: list[ReviseItem], lay: BatchLayout, state: FWState, disc: torch.Tensor, trace: _Trace,
              best: Best, wall: float, peak: float) -> list[ReviseResult]:
        cfg, K = self.cfg, self.cfg.fw_steps
        ftes = self.batch_fte(lay)
        results = []
        for b, it in enumerate(items):
            L, start = lay.prefix_lens[b], lay.starts[b]
            x_e = self.E[torch.tensor(it.prompt_ids, device=self.device)].float()
            results.append(ReviseResult(
                item=it, prefix_len=L, revise_start=start, prefix_ids=list(it.rollout_ids[:L]),
                discrete_ids=disc[b, :L].tolist(), vertex_ids=state.vids[b, :L].cpu(),
                vertex_weights=state.vw[b, :L].cpu(), iterate=state.Z[b, :L].cpu(),
                gold_loss=[_nan_to_none(step[b]) for step in trace.toward],
                away_loss=[_nan_to_none(step[b]) for step in trace.away],
                fluency_loss=[_nan_to_none(step[b]) for step in trace.fluency],
                gammas=[gm[b] for gm in trace.gammas], moves=[mv[b] for mv in trace.moves],
                oracle_ids=[h[b, start:L].tolist() for h in trace.oracle],
                prompt_embeds=torch.cat([x_e, state.Z[b, :L]], dim=0).cpu(),
                fte=float(ftes[b]), wall_s=wall / lay.B, peak_mem_mb=float(peak), objective=lay.objectives[b],
                best_step=int(best.step[b]) if cfg.keep_best else K,
            ))
        return results
