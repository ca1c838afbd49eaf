"""LatentRevise revision core: hull invariants, the chunked oracle, frozen policy, descent, padding,
prompt-cache reuse, determinism, the Frank-Wolfe update and keep-best on hand-made tensors, config
checks, the leakage guard, vLLM == transformers from embeddings, and GPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _load_core():
    """The core alone: the GPU machine has no sqlalchemy, which `methods/__init__` pulls in."""
    try:
        from methods.latentrevise import core
        return core
    except ImportError:
        spec = importlib.util.spec_from_file_location("lr_core", ROOT / "methods" / "latentrevise" / "core.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["lr_core"] = mod
        spec.loader.exec_module(mod)
        return mod


core = _load_core()
ReviseConfig, ReviseItem, Reviser = core.ReviseConfig, core.ReviseItem, core.Reviser
# the first reading (gold answer after the prefix + away from the failed continuation, harmonic steps at every
# position, no fluency term): the Frank-Wolfe mechanics below are tested on it; the defaults are in test_objectives
GOLD = dict(objective="gold-after-prefix", fluency_weight=0.0, step_rule="harmonic")


def gold_cfg(**kw):
    return ReviseConfig(**{**GOLD, **kw})


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (the conftest fixture)."""


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tok


def make_items(tok, specs=((3, 7), (12, 14), (51, 2))):
    """Failed rollouts of different lengths (padding is exercised), each with a wrong answer."""
    items = []
    for a, b in specs:
        x = tok(f"Problem: {a}+{b}\nSolution:", add_special_tokens=False).input_ids
        wrong = a + b + 1
        y = tok(f" {a}+{b}={wrong}. The final answer is \\boxed{{{wrong}}}.", add_special_tokens=False).input_ids
        items.append(ReviseItem(x, y, str(a + b)))
    return items


# ------------------------------------------------------------------------------------------------
# invariants
# ------------------------------------------------------------------------------------------------

def test_iterates_stay_in_hull_and_equal_their_vertex_sum(tiny):
    model, tok = tiny
    K = 5
    E = model.get_input_embeddings().weight.detach()
    # keep_best off: the returned iterate is the K-th, so every oracle pick is one of its vertices
    results = Reviser(model, tok, gold_cfg(fw_steps=K, revise_last=6, keep_best=False)).revise(make_items(tok))
    for r in results:
        w, ids = r.vertex_weights, r.vertex_ids
        assert w.shape == (r.prefix_len, K + 1)
        assert (w >= 0).all()
        assert torch.allclose(w.sum(-1), torch.ones(r.prefix_len), atol=1e-6)
        for i in range(r.prefix_len):
            used = ids[i][w[i] > 0].tolist()
            assert len(used) == len(set(used)) <= K + 1  # merged: one slot per vertex
        # the iterate the model saw (updated as (1-g) z + g e_s) is exactly the convex combination
        assert torch.allclose((w[..., None] * E[ids]).sum(-2), r.iterate, atol=1e-5)
        # positions before the revised window keep their token, weight 1
        frozen = slice(0, r.revise_start)
        assert r.revise_start == r.prefix_len - 6
        assert torch.equal(ids[frozen, 0], torch.tensor(r.prefix_ids[frozen]))
        assert torch.all(w[frozen, 0] == 1)
        assert r.discrete_ids[: r.revise_start] == r.prefix_ids[: r.revise_start]
        # every vertex the oracle picked is a vertex of the iterate, with positive weight
        for picks in r.oracle_ids:
            for j, v in enumerate(picks):
                pos = r.revise_start + j
                assert v in ids[pos][w[pos] > 0].tolist()
        assert r.gammas == pytest.approx([2 / (k + 3) for k in range(K)])  # default rule never takes g = 1


def test_keep_best_returns_the_lowest_objective_iterate(tiny):
    import dataclasses

    model, tok = tiny
    E = model.get_input_embeddings().weight.detach()
    K = 6
    cfg = gold_cfg(fw_steps=K, step_rule="const", step_const=0.7)  # large steps: the objective jumps around
    best = Reviser(model, tok, cfg).revise(make_items(tok))
    last = Reviser(model, tok, dataclasses.replace(cfg, keep_best=False)).revise(make_items(tok))
    picked_earlier = 0
    for rb, rl in zip(best, last):
        assert rb.gold_loss == rl.gold_loss and rl.best_step == K  # same trajectory, different return
        total = [g + cfg.away_weight * a for g, a in zip(rb.gold_loss, rb.away_loss)]
        assert rb.best_step == min(range(K + 1), key=total.__getitem__)
        if rb.best_step == K:
            assert torch.equal(rb.iterate, rl.iterate)
        else:
            picked_earlier += 1
            assert not torch.equal(rb.iterate, rl.iterate)
        assert torch.allclose(rb.vertex_weights.sum(-1), torch.ones(rb.prefix_len), atol=1e-6)
        assert torch.allclose((rb.vertex_weights[..., None] * E[rb.vertex_ids]).sum(-2), rb.iterate, atol=1e-5)
    assert picked_earlier > 0  # otherwise this test checks nothing


def test_chunked_oracle_matches_bruteforce():
    gen = torch.Generator().manual_seed(0)
    G, E = torch.randn(37, 16, generator=gen), torch.randn(101, 16, generator=gen)
    allowed = torch.rand(101, generator=gen) > 0.2
    scores = G @ E.T
    brute = scores.argmin(-1)
    brute_masked = scores.masked_fill(~allowed, float("inf")).argmin(-1)
    for chunk in (1, 7, 64, 101, 500):
        assert torch.equal(core.lmo(G, E, chunk), brute)
        assert torch.equal(core.lmo(G, E, chunk, allowed), brute_masked)
    assert allowed[core.lmo(G, E, 7, allowed)].all()
    d = ((E[None] - G[:, None]) ** 2).sum(-1).masked_fill(~allowed, float("inf"))
    assert torch.equal(core.nearest_tokens(G, E, 9, allowed), d.argmin(-1))


def test_policy_is_untouched(tiny):
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.requires_grad_(True)  # as a policy being trained would be
    results = Reviser(model, tok, gold_cfg(fw_steps=3)).revise(make_items(tok))
    assert all(r is not None for r in results)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # flags restored after the revision
    assert not model.training
    model.requires_grad_(False)


def test_gold_term_decreases_without_away_term(tiny):
    model, tok = tiny
    results = Reviser(model, tok, gold_cfg(fw_steps=6, loss_terms="gold")).revise(make_items(tok))
    for r in results:
        assert len(r.gold_loss) == 7 and all(a is None for a in r.away_loss)
        assert r.gold_loss[-1] < r.gold_loss[0] - 0.05, r.gold_loss


@pytest.mark.parametrize("base", [GOLD, {}], ids=["gold-after-prefix", "defaults"])
def test_batching_and_prompt_cache_do_not_change_results(tiny, base):
    model, tok = tiny
    items = make_items(tok)
    make = lambda **kw: ReviseConfig(**{**base, **kw})  # the defaults: fluency (prompt state from the cache)
    ref = Reviser(model, tok, make(fw_steps=3, revise_batch=8)).revise(items)
    for cfg in (make(fw_steps=3, revise_batch=1), make(fw_steps=3, reuse_prompt_cache=False),
                make(fw_steps=3, grad_checkpointing=True)):
        other = Reviser(model, tok, cfg).revise(items)
        for a, b in zip(ref, other):
            assert a.discrete_ids == b.discrete_ids
            for name in ("gold_loss", "away_loss", "fluency_loss"):
                x, y = getattr(a, name), getattr(b, name)
                assert [v is None for v in x] == [v is None for v in y], name
                assert torch.allclose(torch.tensor([v for v in x if v is not None]),
                                      torch.tensor([v for v in y if v is not None]), atol=1e-5), name


def test_deterministic(tiny):
    model, tok = tiny
    cfg = gold_cfg(fw_steps=3, step_rule="line-search", discretize="nearest")
    a, b = (Reviser(model, tok, cfg).revise(make_items(tok)) for _ in range(2))
    for x, y in zip(a, b):
        assert x.gold_loss == y.gold_loss and x.discrete_ids == y.discrete_ids
        assert torch.equal(x.vertex_ids, y.vertex_ids) and torch.equal(x.vertex_weights, y.vertex_weights)
        assert torch.equal(x.prompt_embeds, y.prompt_embeds)


def test_config_fields_change_the_split_and_objective(tiny):
    model, tok = tiny
    item = make_items(tok)[:1]
    n = len(item[0].rollout_ids)
    assert core.prefix_length(n, ReviseConfig(prefix_len=4)) == 4
    assert core.prefix_length(n, ReviseConfig(prefix_frac=0.5, prefix_max_tokens=3)) == 3
    assert core.prefix_length(1, ReviseConfig()) == 0
    assert core.prefix_length(5, ReviseConfig(prefix_len=99)) == 4  # always leaves a continuation
    clipped = Reviser(model, tok, gold_cfg(fw_steps=2, away_form="clipped-nll", away_clip=0.5)).revise(item)[0]
    assert all(-0.5 - 1e-6 <= v <= 0 for v in clipped.away_loss)  # bounded by the clip
    ul = Reviser(model, tok, gold_cfg(fw_steps=2)).revise(item)[0]
    assert all(v >= 0 for v in ul.away_loss)  # unlikelihood is >= 0
    free = Reviser(model, tok, gold_cfg(fw_steps=2, hull=False)).revise(item)[0]
    E = model.get_input_embeddings().weight.detach()
    assert not torch.allclose(free.iterate, E[free.vertex_ids[:, 0]])  # moved, outside the vertex record


# ------------------------------------------------------------------------------------------------
# the Frank-Wolfe update and keep-best, on hand-made tensors (no model)
# ------------------------------------------------------------------------------------------------

# four vertices of the unit square: every number below is exact in float32
SQUARE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def test_fw_update_two_steps_by_hand():
    # example 0 revises both positions, example 1 only position 0 (position 1 is frozen)
    active = torch.tensor([[True, True], [True, False]])
    state = core.initial_state(torch.tensor([[0, 3], [1, 2]]), SQUARE, K=2)
    assert torch.equal(state.Z, SQUARE[torch.tensor([[0, 3], [1, 2]])])
    # step 1: (0,0) gains vertex 1; (0,1) picks its own vertex 3; (1,0) gains vertex 2; (1,1) frozen
    state = core.fw_update(state, torch.tensor([[1, 3], [2, 0]]), torch.tensor([0.5, 0.25]), active, SQUARE)
    assert torch.equal(state.Z, torch.tensor([[[0.5, 0.0], [1.0, 1.0]], [[0.75, 0.25], [0.0, 1.0]]]))
    assert torch.equal(state.n_used, torch.tensor([[2, 1], [2, 1]]))
    # step 2: (0,0) picks vertex 1 again; (0,1) picks 0, which only a stale (unused) slot holds;
    # (1,0) returns to its original vertex 1; (1,1) is offered vertex 3 but stays frozen
    state = core.fw_update(state, torch.tensor([[1, 0], [1, 3]]), torch.tensor([0.5, 0.5]), active, SQUARE)
    assert torch.equal(state.Z, torch.tensor([[[0.75, 0.0], [0.5, 0.5]], [[0.875, 0.125], [0.0, 1.0]]]))
    assert torch.equal(state.vids, torch.tensor([[[0, 1, 0], [3, 0, 0]], [[1, 2, 0], [2, 0, 0]]]))
    assert torch.equal(state.vw, torch.tensor([[[0.25, 0.75, 0.0], [0.5, 0.5, 0.0]],
                                               [[0.875, 0.125, 0.0], [1.0, 0.0, 0.0]]]))
    assert torch.equal(state.n_used, torch.tensor([[2, 2], [2, 1]]))


def test_fw_update_raises_an_existing_vertex_instead_of_taking_a_slot():
    state = core.initial_state(torch.tensor([[0]]), SQUARE, K=3)
    for _ in range(3):
        state = core.fw_update(state, torch.tensor([[2]]), torch.tensor([0.5]), torch.tensor([[True]]), SQUARE)
    assert state.n_used.item() == 2
    assert state.vids[0, 0, :2].tolist() == [0, 2]
    assert state.vw[0, 0].tolist() == [0.125, 0.875, 0.0, 0.0]  # 1 - (1 - 0.5)^3 on vertex 2
    assert state.Z[0, 0].tolist() == [0.0, 0.875]


def test_fw_update_keeps_the_hull_invariants_on_random_steps():
    gen = torch.Generator().manual_seed(0)
    V, H, B, Lmax, K = 7, 5, 3, 6, 8
    E = torch.randn(V, H, generator=gen)
    active = torch.rand(B, Lmax, generator=gen) > 0.3
    start = core.initial_state(torch.randint(0, V, (B, Lmax), generator=gen), E, K)
    state, picks = start, []
    for _ in range(K):
        s = torch.randint(0, V, (B, Lmax), generator=gen)  # few vertices: many repeats
        picks.append(s)
        state = core.fw_update(state, s, torch.rand(B, generator=gen) * 0.9 + 0.1, active, E)
    w, ids = state.vw, state.vids
    assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(B, Lmax), atol=1e-6)
    assert torch.allclose((w[..., None] * E[ids]).sum(-2), state.Z, atol=1e-5)
    for b in range(B):
        for i in range(Lmax):
            if not active[b, i]:  # frozen: bit for bit the start
                for name in ("Z", "vids", "vw", "n_used"):
                    assert torch.equal(getattr(state, name)[b, i], getattr(start, name)[b, i]), name
                continue
            n = state.n_used[b, i].item()
            seen = {start.vids[b, i, 0].item()} | {s[b, i].item() for s in picks}
            assert n == len(seen) and set(ids[b, i, :n].tolist()) == seen  # one slot per distinct vertex
            assert (w[b, i, n:] == 0).all()


def test_keep_if_better_keeps_each_examples_lowest_iterate():
    active = torch.ones(2, 1, dtype=torch.bool)
    s0 = core.initial_state(torch.tensor([[0], [1]]), SQUARE, K=1)
    s1 = core.fw_update(s0, torch.tensor([[3], [3]]), torch.tensor([0.5, 0.5]), active, SQUARE)
    best = core.Best(torch.full((2,), float("inf")), torch.zeros(2, dtype=torch.long), s0)
    best = core.keep_if_better(best, 0, torch.tensor([2.0, 1.0]), s0)
    best = core.keep_if_better(best, 1, torch.tensor([1.5, 1.0]), s1)  # a tie is not an improvement
    assert best.total.tolist() == [1.5, 1.0] and best.step.tolist() == [1, 0]
    assert torch.equal(best.state.Z, torch.tensor([[[0.5, 0.5]], [[1.0, 0.0]]]))
    assert torch.equal(best.state.vw, torch.tensor([[[0.5, 0.5]], [[1.0, 0.0]]]))
    assert best.state.n_used.tolist() == [[2], [1]]


# ------------------------------------------------------------------------------------------------
# config checks
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, allowed", [
    ("step_rule", "harmonic | const | line-search | gap-topm | gcg"), ("loss_terms", "both | gold | away"),
    ("away_form", "unlikelihood | clipped-nll"), ("discretize", "max-weight | nearest | sample"),
    ("oracle_dtype", "model | float32"), ("objective", "gold-after-prefix | gold-in-rollout | self-contrast | fluency"),
    ("contrast_fallback", "gold-after-prefix | gold-in-rollout")])
def test_config_rejects_an_unknown_choice_naming_the_field_and_the_choices(name, allowed):
    with pytest.raises(ValueError) as err:
        ReviseConfig(**{name: "bogus"})
    assert str(err.value) == f"ReviseConfig.{name} must be one of {allowed}, got 'bogus'"


@pytest.mark.parametrize("bad", [dict(fw_steps=-1), dict(prefix_frac=0.0), dict(prefix_frac=1.5),
                                 dict(step_const=0.0), dict(step_const=1.01), dict(line_search_grid=()),
                                 dict(line_search_grid=(0.5, 0.0)), dict(away_weight=-0.1), dict(away_clip=0.0),
                                 dict(prefix_min_tokens=0), dict(prefix_max_tokens=0), dict(prefix_len=0),
                                 dict(revise_last=0), dict(away_max_tokens=0), dict(oracle_chunk=0),
                                 dict(revise_batch=0), dict(record_top=-1)])
def test_config_rejects_out_of_range_values(bad):
    (name,) = bad
    with pytest.raises(ValueError, match=f"ReviseConfig: {name} must be"):
        ReviseConfig(**bad)


def test_config_accepts_the_range_edges():
    cfg = ReviseConfig(fw_steps=0, prefix_frac=1.0, step_const=1.0, line_search_grid=(1.0,), away_weight=0.0,
                       prefix_max_tokens=None, away_max_tokens=None, record_top=0)
    assert cfg.fw_steps == 0 and cfg.prefix_frac == 1.0 and cfg.step_const == 1.0


def test_config_checks_run_through_flat_subclasses_and_replace():
    import dataclasses

    from methods.latentrevise.mining import LatentReviseConfig

    with pytest.raises(ValueError, match="LatentReviseConfig.step_rule must be one of"):
        LatentReviseConfig(step_rule="newton")
    with pytest.raises(ValueError, match="fw_steps must be >= 0"):
        dataclasses.replace(LatentReviseConfig(), fw_steps=-1)

    @dataclasses.dataclass
    class Other:
        other: int = 0

        def __post_init__(self):
            if self.other < 0:
                raise ValueError("other must be >= 0")

    @dataclasses.dataclass
    class After(ReviseConfig, Other):  # ReviseConfig first: it passes the call on to Other
        pass

    @dataclasses.dataclass
    class Own(ReviseConfig, Other):  # a subclass with checks of its own calls super's first
        own: int = 0

        def __post_init__(self):
            super().__post_init__()
            if self.own < 0:
                raise ValueError("own must be >= 0")

    with pytest.raises(ValueError, match="own must be"):
        Own(own=-1)
    for flat in (After, Own):
        with pytest.raises(ValueError, match="other must be"):
            flat(other=-1)
        with pytest.raises(ValueError, match=f"{flat.__name__}.discretize must be one of"):
            flat(discretize="round")
        assert dataclasses.replace(flat(), fw_steps=3).fw_steps == 3


def test_leakage_guard_catches_planted_cases():
    from methods.latentrevise.mining import bare_restatement, leak_check, prefix_leak

    # (A) the revision wrote the answer into the prefix
    assert prefix_leak("23 + 45 = 204.", "23 + 45 = 68.", "204")
    assert prefix_leak("so \\boxed{7", "so the", "9")
    assert not prefix_leak("68 * 3 = 204.", "68 * 3 = 204.", "204")  # was there before the revision
    assert not prefix_leak("1204 + 5", "1 + 5", "204")  # inside a longer number
    # (B) answer restated without reasoning
    assert bare_restatement("23 + 45 = 68.", " The answer is \\boxed{204}.", "204", 3)
    assert not bare_restatement("23 + 45 = 68. 68 * 3 = 2", "04. The answer is \\boxed{204}.", "204", 3)
    assert not bare_restatement("23 + 45 = 68.", " 68 * 3 = 60 * 3 + 8 * 3 = 204. The answer is \\boxed{204}.",
                                "204", 3)
    assert leak_check("a", "a", " The answer is \\boxed{5}.", "5", 3)


def test_rollouts_mined_from_another_run_count_each_problem_once(tiny, tmp_path):
    """mine_source="rollouts": a problem zero-hit at several steps is ONE zero-hit prompt (its earliest group),
    as outcomes and rescue rates are keyed by problem."""
    from benchmarks import Problem
    from harness.store import Rollout, get_or_create_run, open_db, session_scope
    from methods.latentrevise.mining import screened_from_rollouts

    tok = tiny[1]
    db = open_db(f"sqlite:///{tmp_path / 'r.db'}")
    run, _ = get_or_create_run(db, method="grpo", model="tiny", preset="test", seed=0, config={"name": "grpo"})
    groups = [(0, "p0", "a"), (0, "p1", "b"), (1, "p0", "c"), (2, "p0", "d"), (2, "p1", "d")]
    with session_scope(db) as s:
        s.add_all(Rollout(run_id=run.id, step=st, problem_id=pid, sample_index=j, source="policy",
                          prompt=f"Problem: {pid}\nSolution:", completion=f" {text} {j}", gold="1", reward=0.0,
                          zero_hit_group=True) for st, pid, text in groups for j in range(2))
        s.add(Rollout(run_id=run.id, step=1, problem_id="p2", sample_index=0, source="policy", prompt="x",
                      completion="y", gold="1", reward=1.0, zero_hit_group=False))  # solved: not zero-hit
    problems = [Problem(p, f"problem {p}", "1") for p in ("p0", "p1", "p2")]
    out = screened_from_rollouts(run.id, problems, tok, SimpleNamespace(db=db))
    assert [sc.problem.id for sc in out] == ["p0", "p1"]
    assert [[c.text for c in sc.rollouts] for sc in out] == [[" a 0", " a 1"], [" b 0", " b 1"]]  # the earliest
    assert all(sc.zero_hit and sc.correct == [False, False] for sc in out)


# ------------------------------------------------------------------------------------------------
# continuation from embeddings: vLLM == transformers
# ------------------------------------------------------------------------------------------------

@pytest.mark.vllm
def test_vllm_and_transformers_continue_the_same_from_embeddings(tiny, vllm_generator, hf_generator):
    from harness.generation import Sampling

    model, tok = tiny
    results = Reviser(model, tok, gold_cfg(fw_steps=3)).revise(make_items(tok)[:2])
    embeds = [r.prompt_embeds for r in results]
    greedy = Sampling(n=1, temperature=0.0, max_tokens=12)
    a = vllm_generator.generate(embeds, greedy)
    b = hf_generator.generate(embeds, greedy)
    for x, y, e in zip(a, b, embeds):
        assert len(x[0].token_ids) > 0
        assert x[0].token_ids == y[0].token_ids
        assert x[0].prompt_tokens == y[0].prompt_tokens == e.shape[0]
    assert embeds[0].shape[0] == len(results[0].item.prompt_ids) + results[0].prefix_len


# ------------------------------------------------------------------------------------------------
# GPU (skipped without CUDA)
# ------------------------------------------------------------------------------------------------

class _StubTok:
    """Enough of a tokenizer for the core: ids from characters."""

    def __init__(self, vocab: int):
        self.vocab, self.pad_token_id, self.all_special_ids = vocab, 0, [0]

    def __len__(self):
        return self.vocab

    def __call__(self, text, add_special_tokens=False):
        return SimpleNamespace(input_ids=[1 + ord(c) % (self.vocab - 1) for c in text])

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(map(str, ids))


def _random_qwen(vocab=4096, hidden=256, layers=4, dtype=torch.bfloat16, device="cuda"):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      max_position_embeddings=1024)
    return Qwen2ForCausalLM(cfg).to(device, dtype).eval()


def _gpu_items(n=4, seed=0, vocab=4096):
    g = torch.Generator().manual_seed(seed)
    return [ReviseItem(torch.randint(1, vocab, (20 + 7 * i,), generator=g).tolist(),
                       torch.randint(1, vocab, (40 + 9 * i,), generator=g).tolist(), str(100 + i)) for i in range(n)]


def _assert_same_trajectory(a, b, k: int, rel: float = 0.05, prefix_agree: float = 0.95) -> None:
    """Two bf16 revisions of one item agree at every Frank-Wolfe iterate, not just the first: all K+1 toward and
    away losses within `rel` (bf16 reduction order differs between the variants), and the discrete prefix p'
    (an argmax over weights: a bf16 near-tie may flip a position, so `prefix_agree` of the positions)."""
    for name in ("gold_loss", "away_loss"):
        x, y = getattr(a, name), getattr(b, name)
        assert len(x) == len(y) == k + 1, (name, len(x), len(y))
        for i, (u, v) in enumerate(zip(x, y)):
            assert (u is None) == (v is None) and (u is None or abs(u - v) < rel * max(1.0, abs(u))), (name, i, u, v)
    assert len(a.discrete_ids) == len(b.discrete_ids) == a.prefix_len
    same = sum(p == q for p, q in zip(a.discrete_ids, b.discrete_ids)) / a.prefix_len
    assert same >= prefix_agree, (same, a.discrete_ids, b.discrete_ids)


def test_trajectory_comparison_catches_a_late_divergence():
    """The helper of the GPU test, on the CPU: a divergence after step 0 (loss or prefix) fails it."""
    good = SimpleNamespace(gold_loss=[3.0, 2.0, 1.0], away_loss=[1.0, 1.5, 2.0], discrete_ids=list(range(20)),
                           prefix_len=20)
    _assert_same_trajectory(good, SimpleNamespace(**{**vars(good), "gold_loss": [3.0, 2.01, 1.01]}), 2)
    for bad in ({"gold_loss": [3.0, 2.0, 1.5]}, {"away_loss": [1.0, 1.5]},
                {"discrete_ids": [99] * 2 + list(range(2, 20))}):
        with pytest.raises(AssertionError):
            _assert_same_trajectory(good, SimpleNamespace(**{**vars(good), **bad}), 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bf16_revision_matches_its_variants_and_keeps_invariants():
    model = _random_qwen()
    tok = _StubTok(model.config.vocab_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    items = _gpu_items()
    ref = Reviser(model, tok, gold_cfg(fw_steps=4)).revise(items)  # checkpointing on (CUDA default)
    assert Reviser(model, tok, gold_cfg()).checkpointing
    for cfg in (gold_cfg(fw_steps=4, grad_checkpointing=False), gold_cfg(fw_steps=4, reuse_prompt_cache=False)):
        for a, b in zip(ref, Reviser(model, tok, cfg).revise(items)):
            _assert_same_trajectory(a, b, cfg.fw_steps)
    E = model.get_input_embeddings().weight.detach().float().cpu()
    for r in ref:
        assert torch.allclose(r.vertex_weights.sum(-1), torch.ones(r.prefix_len), atol=1e-5)
        assert torch.allclose((r.vertex_weights[..., None] * E[r.vertex_ids]).sum(-2), r.iterate, atol=1e-3)
        assert r.peak_mem_mb and r.peak_mem_mb > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_chunked_oracle_matches_bruteforce_and_bounds_memory():
    g = torch.Generator(device="cuda").manual_seed(0)
    G = torch.randn(512, 1536, device="cuda", generator=g)
    E = torch.randn(151936, 1536, device="cuda", generator=g)
    brute = (G @ E.T).argmin(-1)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    got = core.lmo(G, E, 8192, dtype=torch.float32)
    extra = torch.cuda.max_memory_allocated() - base
    assert (got == brute).float().mean() > 0.999  # float32 reduction order may flip exact near-ties
    assert extra < 4 * 512 * 8192 * 4 + 64 * 2**20  # O(N x chunk), far below N x V x 4 = 311 MB
