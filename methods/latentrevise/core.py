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

Choices the abstract leaves open are `ReviseConfig` fields. The non-obvious ones:
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
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

DEFAULT_GOLD_TEMPLATE = " The final answer is \\boxed{{answer}}."  # "{answer}" is replaced
TINY_GOLD_TEMPLATE = " The answer is \\boxed{{answer}}."  # the arith solutions' own closing sentence


@dataclass
class ReviseConfig:
    # prefix split: L = clamp(round(prefix_frac * |y|), prefix_min_tokens, prefix_max_tokens), < |y|
    prefix_frac: float = 0.5
    prefix_max_tokens: int | None = 256
    prefix_min_tokens: int = 1
    prefix_len: int | None = None  # a fixed L (still < |y|); overrides prefix_frac
    revise_last: int | None = None  # M: revise only the last M prefix positions (None = all L)
    fw_steps: int = 10  # K
    step_rule: str = "harmonic"  # harmonic: 2/(k+3) | const: step_const | line-search
    step_const: float = 0.3
    line_search_grid: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    hull: bool = True  # False (ablation): unconstrained normalized-gradient steps, p' by nearest token
    # objective
    loss_terms: str = "both"  # both: gold + away_weight*away | gold | away (ablation)
    gold_template: str | None = None  # None: TINY_GOLD_TEMPLATE for the tiny-boxed template, else DEFAULT
    away_weight: float = 0.5
    away_form: str = "unlikelihood"  # unlikelihood: mean -log(1-p) | clipped-nll: -min(NLL, away_clip)
    away_clip: float = 5.0  # nats per token (clipped-nll)
    away_max_tokens: int | None = 128  # first tokens of the failed continuation the away term sees
    # oracle and discretization
    oracle_chunk: int = 16384  # vocabulary rows per chunk of G E^T
    oracle_dtype: str = "model"  # model: matmul in the model dtype | float32
    exclude_special: bool = True
    discretize: str = "max-weight"  # max-weight: heaviest vertex | nearest: nearest embedding row
    record_top: int = 5  # top tokens stored per revised position
    # execution
    revise_batch: int = 8  # failed rollouts revised together (one padded batch)
    reuse_prompt_cache: bool = True
    grad_checkpointing: bool | None = None  # None: on for CUDA, off for CPU
    eval_final: bool = True  # one extra forward so the loss curves have K+1 points
    keep_best: bool = True  # return the iterate with the lowest objective among 0..K, not the K-th (see docstring)


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
# the reviser
# ------------------------------------------------------------------------------------------------

class Reviser:
    """Revises batches of failed rollouts with a frozen causal LM (Hugging Face, decoder + lm_head)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: ReviseConfig = ReviseConfig(),
                 template: str | None = None):
        if cfg.away_form not in ("unlikelihood", "clipped-nll"):
            raise ValueError(f"away_form must be unlikelihood or clipped-nll, got {cfg.away_form!r}")
        if cfg.step_rule not in ("harmonic", "const", "line-search"):
            raise ValueError(f"step_rule must be harmonic, const or line-search, got {cfg.step_rule!r}")
        if cfg.discretize not in ("max-weight", "nearest"):
            raise ValueError(f"discretize must be max-weight or nearest, got {cfg.discretize!r}")
        if cfg.loss_terms not in ("both", "gold", "away"):
            raise ValueError(f"loss_terms must be both, gold or away, got {cfg.loss_terms!r}")
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
        """Forward-token equivalents of revising one rollout (module docstring); row_tokens = its rows' Z+suffix tokens."""
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
        cfg, dev, E = self.cfg, self.device, self.E
        K, B, H = cfg.fw_steps, len(items), E.shape[1]
        t0 = time.perf_counter()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        Ls = [prefix_length(len(it.rollout_ids), cfg) for it in items]
        starts = [0 if cfg.revise_last is None else max(0, L - cfg.revise_last) for L in Ls]
        golds = [self.tokenizer(gold_text(it.gold, cfg, self.template), add_special_tokens=False).input_ids
                 for it in items]
        aways = [it.rollout_ids[L:] for it, L in zip(items, Ls)]
        if cfg.away_max_tokens is not None:
            aways = [a[: cfg.away_max_tokens] for a in aways]
        use_away = cfg.loss_terms == "away" or (cfg.loss_terms == "both" and cfg.away_weight > 0)
        suffixes = golds + (aways if use_away else [])
        R = len(suffixes)  # rows: B gold rows, then B away rows
        Lmax = max(Ls)
        T_new = max(Ls[r % B] + len(s) for r, s in enumerate(suffixes))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        # prompt: left-padded, run once, its cache shared by all rows and steps
        Tx = max(len(it.prompt_ids) for it in items)
        x_ids = torch.full((B, Tx), pad, dtype=torch.long)
        x_mask = torch.zeros((B, Tx), dtype=torch.long)
        for b, it in enumerate(items):
            x_ids[b, Tx - len(it.prompt_ids):] = torch.tensor(it.prompt_ids)
            x_mask[b, Tx - len(it.prompt_ids):] = 1
        x_ids, x_mask = x_ids.to(dev), x_mask.to(dev)
        x_len = x_mask.sum(-1)  # [B]
        rows_b = torch.arange(R, device=dev) % B

        # new part of each row: [Z_b (L_b positions) ; suffix], right-padded to T_new
        tok = torch.full((R, T_new), pad, dtype=torch.long)
        new_mask = torch.zeros((R, T_new), dtype=torch.long)
        tgt_row, tgt_pos, tgt_tok = [], [], []
        for r, s in enumerate(suffixes):
            L = Ls[r % B]
            tok[r, L:L + len(s)] = torch.tensor(s, dtype=torch.long)
            new_mask[r, : L + len(s)] = 1
            tgt_row += [r] * len(s)
            tgt_pos += list(range(L - 1, L - 1 + len(s)))  # hidden state that predicts each suffix token
            tgt_tok += s
        tok, new_mask = tok.to(dev), new_mask.to(dev)
        tgt_row_t, tgt_pos_t = torch.tensor(tgt_row, device=dev), torch.tensor(tgt_pos, device=dev)
        tgt_tok_t = torch.tensor(tgt_tok, device=dev)
        is_z = (torch.arange(T_new, device=dev)[None, :] < torch.tensor([Ls[r % B] for r in range(R)], device=dev)[:, None])
        pos_new = x_len[rows_b, None] + torch.arange(T_new, device=dev)[None, :]
        attn = torch.cat([x_mask[rows_b], new_mask], dim=1)
        n_tgt = torch.zeros(R, device=dev).index_add_(0, tgt_row_t, torch.ones(len(tgt_row), device=dev))

        # Frank-Wolfe state: sparse convex weights over at most K+1 vertices per position
        p_ids = torch.full((B, Lmax), pad, dtype=torch.long)
        for b, (it, L) in enumerate(zip(items, Ls)):
            p_ids[b, :L] = torch.tensor(it.rollout_ids[:L])
        p_ids = p_ids.to(dev)
        ar = torch.arange(Lmax, device=dev)[None, :]
        Ls_t = torch.tensor(Ls, device=dev)[:, None]
        active = (ar < Ls_t) & (ar >= torch.tensor(starts, device=dev)[:, None])  # [B, Lmax]
        vids = torch.zeros((B, Lmax, K + 1), dtype=torch.long, device=dev)
        vids[..., 0] = p_ids
        vw = torch.zeros((B, Lmax, K + 1), dtype=torch.float32, device=dev)
        vw[..., 0] = 1.0
        n_used = torch.ones((B, Lmax), dtype=torch.long, device=dev)
        Z = E[p_ids].float()  # [B, Lmax, H], kept in sync with the weights by the FW update
        emb_norm = E[self.allowed].float().norm(dim=-1).mean()  # step scale of the hull=False ablation

        with torch.no_grad(), self._autocast():
            prompt_cache = None
            if cfg.reuse_prompt_cache:
                from transformers import DynamicCache

                pos_x = (x_mask.cumsum(-1) - 1).clamp(min=0)
                try:
                    cache = DynamicCache(config=self.model.config)
                except TypeError:  # older transformers
                    cache = DynamicCache()
                out = self.decoder(input_ids=x_ids, attention_mask=x_mask, position_ids=pos_x,
                                   past_key_values=cache, use_cache=True)
                prompt_cache = out.past_key_values
                # rows share their example's prompt: repeat the cache along the batch (gold, away)
                if R != B:
                    for layer in prompt_cache.layers:
                        layer.keys, layer.values = layer.keys[rows_b], layer.values[rows_b]
                prompt_cache = _frozen_prefix_cache(prompt_cache)
            x_embeds = E[x_ids]

        def objective(Zc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """Per-example (total, gold, away) at iterate Zc [B, Lmax, H]."""
            base = E[tok]  # [R, T_new, H]
            Zrows = Zc[rows_b].to(base.dtype)
            if T_new > Lmax:
                Zrows = F.pad(Zrows, (0, 0, 0, T_new - Lmax))
            emb = torch.where(is_z[..., None], Zrows[:, :T_new], base)
            if prompt_cache is not None:
                hidden = self.decoder(inputs_embeds=emb, attention_mask=attn, position_ids=pos_new,
                                      past_key_values=prompt_cache, use_cache=True).last_hidden_state
            else:
                full = torch.cat([x_embeds[rows_b], emb], dim=1)
                pos = torch.cat([(x_mask.cumsum(-1) - 1).clamp(min=0)[rows_b], pos_new], dim=1)
                hidden = self.decoder(inputs_embeds=full, attention_mask=attn, position_ids=pos,
                                      use_cache=False).last_hidden_state[:, Tx:]
            logits = self.lm_head(hidden[tgt_row_t, tgt_pos_t]).float()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, tgt_tok_t[:, None]).squeeze(-1)
            row_sum = lambda v: torch.zeros(R, device=dev, dtype=v.dtype).index_add_(0, tgt_row_t, v)
            gold = (row_sum(-logp) / n_tgt)[:B]
            if not use_away:
                return gold, gold, torch.full_like(gold, float("nan"))
            if cfg.away_form == "unlikelihood":
                ul = -torch.log1p(-logp.exp().clamp(max=1 - 1e-6))
                away = (row_sum(ul) / n_tgt)[B:]
            else:
                away = -torch.clamp((row_sum(-logp) / n_tgt)[B:], max=cfg.away_clip)
            if cfg.loss_terms == "away":
                return away, gold, away
            return gold + cfg.away_weight * away, gold, away

        gold_curve: list[list[float]] = []
        away_curve: list[list[float]] = []
        gammas: list[float | list[float]] = []
        oracle_hist: list[torch.Tensor] = []
        n_ls = 0
        kept = {"total": torch.full((B,), math.inf, device=dev), "step": torch.zeros(B, dtype=torch.long, device=dev),
                "Z": Z.clone(), "vids": vids.clone(), "vw": vw.clone()}

        def keep_if_best(k: int, total: torch.Tensor) -> None:
            if not cfg.keep_best:  # the K-th iterate is returned: nothing to keep
                return
            better = total.detach() < kept["total"]
            kept["total"] = torch.where(better, total.detach(), kept["total"])
            kept["step"] = torch.where(better, torch.full_like(kept["step"], k), kept["step"])
            for name, cur in (("Z", Z), ("vids", vids), ("vw", vw)):
                kept[name] = torch.where(better.view(-1, *[1] * (cur.dim() - 1)), cur, kept[name])

        with self._autocast(), _checkpointed_layers(self.decoder, self.checkpointing):
            for k in range(K):
                Zv = Z.detach().requires_grad_(True)
                total, gold, away = objective(Zv)
                (G,) = torch.autograd.grad(total.sum(), Zv)
                keep_if_best(k, total)
                gold_curve.append(gold.detach().tolist())
                away_curve.append(away.detach().tolist())
                with torch.no_grad():
                    s = torch.zeros((B, Lmax), dtype=torch.long, device=dev)
                    s[active] = lmo(G[active], E, cfg.oracle_chunk, self.allowed, self.oracle_dtype)
                    oracle_hist.append(s.clone())
                    e_s = E[s].float()
                    if cfg.step_rule == "line-search":
                        best = torch.full((B,), math.inf, device=dev)
                        g_b = torch.zeros(B, device=dev)
                        for gamma in cfg.line_search_grid:
                            cand = torch.where(active[..., None], (1 - gamma) * Z + gamma * e_s, Z)
                            val = objective(cand)[0]
                            better = val < best
                            best, g_b = torch.where(better, val, best), torch.where(better, torch.full_like(g_b, gamma), g_b)
                        n_ls += len(cfg.line_search_grid)
                    else:
                        g_b = torch.full((B,), step_size(k, cfg), device=dev)
                    gammas.append(g_b.tolist())
                    g = g_b[:, None] * active  # [B, Lmax]
                    if not cfg.hull:  # ablation: leave the hull; the weights keep describing p only
                        step = G / G.norm(dim=-1, keepdim=True).clamp(min=1e-12) * emb_norm
                        Z = Z - g[..., None] * step
                        continue
                    Z = (1 - g)[..., None] * Z + g[..., None] * e_s
                    vw = vw * (1 - g)[..., None]
                    slots = torch.arange(K + 1, device=dev)
                    match = (vids == s[..., None]) & (slots < n_used[..., None])
                    has = match.any(-1)
                    vw = vw + match * g[..., None]
                    new = (~has & active)
                    new_slot = F.one_hot(n_used.clamp(max=K), K + 1).bool() & new[..., None]
                    vids = torch.where(new_slot, s[..., None], vids)
                    vw = vw + new_slot * g[..., None]
                    n_used = n_used + new.long()
            if cfg.eval_final:
                with torch.no_grad():
                    total, gold, away = objective(Z)
                    keep_if_best(K, total)
                    gold_curve.append(gold.tolist())
                    away_curve.append(away.tolist())
            if cfg.keep_best:
                Z, vids, vw = kept["Z"], kept["vids"], kept["vw"]

        with torch.no_grad():
            if cfg.discretize == "max-weight" and cfg.hull:
                disc = vids.gather(-1, vw.argmax(-1, keepdim=True)).squeeze(-1)
            else:
                disc = p_ids.clone()
                disc[active] = nearest_tokens(Z[active], E, cfg.oracle_chunk, self.allowed)
        wall = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated(dev) / 2**20) if self.cuda \
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # CPU: process peak RSS
        results = []
        for b, (it, L) in enumerate(zip(items, Ls)):
            row_tokens = sum(Ls[b] + len(suffixes[r]) for r in range(R) if r % B == b)
            fte = self.fte(len(it.prompt_ids), L - starts[b], row_tokens, R // B, n_ls)
            x_e = E[torch.tensor(it.prompt_ids, device=dev)].float()
            results.append(ReviseResult(
                item=it, prefix_len=L, revise_start=starts[b], prefix_ids=list(it.rollout_ids[:L]),
                discrete_ids=disc[b, :L].tolist(), vertex_ids=vids[b, :L].cpu(),
                vertex_weights=vw[b, :L].cpu(), iterate=Z[b, :L].cpu(),
                gold_loss=[step[b] for step in gold_curve],
                away_loss=[None if math.isnan(step[b]) else step[b] for step in away_curve],
                gammas=[gm[b] for gm in gammas],
                oracle_ids=[h[b, starts[b]:L].tolist() for h in oracle_hist],
                prompt_embeds=torch.cat([x_e, Z[b, :L]], dim=0).cpu(),
                fte=float(fte), wall_s=wall / B, peak_mem_mb=float(peak), gold_ids=golds[b],
                best_step=int(kept["step"][b]) if cfg.keep_best else K,
            ))
        return results
