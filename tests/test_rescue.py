"""Mining and rescue: zero-hit screening, Revision rows, planted rescues and leakage, matched-compute baselines."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import Problem
from harness.generation import Completion, HFGenerator
from harness.method import RunContext
from harness.store import Revision, Rollout, TrainStep, get_or_create_run, open_db, session_scope
from methods.hint import HintConfig, rescue_hint
from methods.latentrevise.mining import LatentReviseConfig, mine, rescue_latentrevise, training_pairs
from methods.resample import MatchedRescueConfig, rescue_resample

PROBLEMS = [Problem(f"p{i}", f"Compute {a} + {b}.", str(a + b)) for i, (a, b) in enumerate([(12, 9), (40, 7), (3, 88)])]
SMALL = dict(mine_samples=2, mine_max_tokens=12, cont_samples=2, failed_per_prompt=1, fw_steps=2, prefix_frac=0.5)
# planted generators answer from the latent prefix: a step rule that leaves Z off-vertex (the default keeps Z a
# vertex, deduplicating the latent arm), and every latent text accepted (the honest-text rule has its own test)
LATENT = dict(SMALL, step_rule="harmonic", latent_text_margin=1e9)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (the conftest fixture)."""


@pytest.fixture(scope="module")
def grader():
    from harness.grading import Grader

    return Grader(workers=0)


def make_ctx(db_url, tmp_path, grader, make_generator, name="lr") -> RunContext:
    db = open_db(db_url)
    run, _ = get_or_create_run(db, method=name, model="tiny", preset="test", seed=0, config={"name": name})
    return RunContext(run_id=run.id, db=db, out_dir=Path(tmp_path), seed=0, template="tiny-boxed", grader=grader,
                      make_generator=make_generator, progress=False)


def test_mining_finds_zero_hit_prompts_and_logs_revisions(tiny_model_dir, db_url, tmp_path, grader):
    ctx = make_ctx(db_url, tmp_path, grader, lambda m: HFGenerator(m, None))
    res = mine(str(tiny_model_dir), PROBLEMS, LatentReviseConfig(**SMALL), ctx, rescue_latentrevise, "latentrevise")
    st = res.stats
    assert st["n_prompts"] == 3 and st["n_zero_hit"] == 3 and st["zero_hit_frac"] == 1.0  # a random model
    assert st["fte_per_zero_hit"] > 0 and st["source"] == "latentrevise"
    with session_scope(ctx.db) as s:
        revs = s.query(Revision).filter_by(run_id=ctx.run_id).all()
        assert len(revs) == 3  # one failed rollout per zero-hit prompt
        for r in revs:
            assert r.fw_steps == 2 and 1 <= r.prefix_len
            assert len(r.gold_loss) == len(r.away_loss) == 3  # K + 1 iterates
            assert len(r.top_tokens) == r.prefix_len
            for pos in r.top_tokens:
                assert 1 <= len(pos) <= 5 and sum(w for _, w in pos) <= 1 + 1e-4
            stats = r.config["_stats"]
            arms = stats["arms"]
            assert set(arms) == {"unrevised", "discrete", "latent"} and all(a["n"] == 2 for a in arms.values())
            sampled = {a for a, v in arms.items() if v["same_as"] is None}  # deduplicated arms are not stored twice
            assert len(r.continuations) == 2 * len(sampled) and {c["arm"] for c in r.continuations} == sampled
            assert all(set(c) >= {"text", "arm", "arms", "correct", "leakage", "valid_steps", "honest"}
                       for c in r.continuations)
            assert r.rescued == any(c["correct"] and {"discrete", "latent"} & set(c["arms"]) for c in r.continuations)
            assert (stats["dedup_saved_fte"] > 0) == (len(sampled) < 3) and stats["fte_control"] > 0
            assert stats["p_changed"] == (arms["discrete"]["same_as"] is None)
            assert len(stats["changed"]) == round(stats["changed_frac"] * r.prefix_len)  # every position revised
            assert r.wall_s > 0 and r.peak_mem_mb > 0 and stats["fte_revise"] > 0
        step = s.query(TrainStep).filter_by(run_id=ctx.run_id, phase="mining").one()
        assert step.zero_hit_frac == 1.0 and sorted(step.zero_hit_ids) == ["p0", "p1", "p2"]
        rescue = step.extra["rescue"]
        assert rescue["n_zero_hit"] == 3 and rescue["n_revisions"] == 3
        assert set(rescue["arms"]) == {"unrevised", "discrete", "latent"} and rescue["arms"]["unrevised"]["n"] == 6
        assert rescue["valid_step_rate"] is None  # these problems carry no arith meta: steps are not checked
        rolls = s.query(Rollout).filter_by(run_id=ctx.run_id, source="policy").all()
        assert len(rolls) == 6 and all(r.zero_hit_group for r in rolls)
    latents = torch.load(Path(tmp_path) / "latent_prefixes_step0.pt")
    assert len(latents) == 3 and torch.allclose(latents[0]["vertex_weights"].sum(-1), torch.ones(1))


class PlantedGenerator:
    """Screening: a wrong answer. From the latent prefix: a reasoned correct answer. From p': a bare one."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def generate(self, prompts, sampling, seeds=None, progress=False):
        out = []
        for p in prompts:
            if isinstance(p, str):
                text = " 1 + 1 = 3. The answer is \\boxed{3}."
            elif isinstance(p, torch.Tensor):
                text = " so 2 + 2 = 4. The answer is \\boxed{4}."
            else:
                text = " The answer is \\boxed{4}."
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            out.append([Completion(text, ids, "stop", 0) for _ in range(sampling.n)])
        return out

    def close(self):
        pass


def test_planted_rescue_becomes_training_data_and_leak_is_excluded(tiny_model_dir, db_url, tmp_path, grader):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ctx = make_ctx(db_url, tmp_path, grader, lambda m: PlantedGenerator(tok))
    problems = [Problem("q0", "Compute 2 + 2.", "4")]
    res = mine(str(tiny_model_dir), problems, LatentReviseConfig(**LATENT), ctx, rescue_latentrevise, "latentrevise")
    st = res.stats
    assert st["n_zero_hit"] == 1 and st["rescue_rate"] == 1.0 and st["clean_rescue_rate"] == 1.0
    assert st["leak_frac"] == pytest.approx(0.5)  # the bare discrete continuations are flagged
    modes = {(t.mode, t.leakage) for o in res.outcomes for t in o.trajectories}
    assert modes == {("latent", False), ("discrete", True)}
    assert len(res.pairs) == 1 and res.pairs[0][1].endswith("so 2 + 2 = 4. The answer is \\boxed{4}.")
    cfg_leaky = LatentReviseConfig(**LATENT, include_leaky=True)
    assert len(training_pairs(res.outcomes, cfg_leaky)) == 2
    assert training_pairs(res.outcomes, LatentReviseConfig(**LATENT, train_prefix="discrete")) == []
    with session_scope(ctx.db) as s:
        rev = s.query(Revision).filter_by(run_id=ctx.run_id).one()
        assert rev.rescued and rev.leakage
        revised = s.query(Rollout).filter_by(run_id=ctx.run_id, source="revised").all()
        assert len(revised) == 4 and all(r.reward == 1.0 for r in revised)


def _budgets_and_spent(tiny_model_dir, res, cfg, prompt_for) -> list[tuple[str, float, float, int]]:
    """(problem, budget, spent, prompt tokens) per zero-hit prompt: the matched budget recomputed from the
    screening the run used (methods.resample.budgets), the FTE the outcome reports."""
    from methods.latentrevise.mining import load_frozen_model
    from methods.resample import budgets

    model, tok = load_frozen_model(str(tiny_model_dir), "cpu")
    zero = [sc for sc in res.screened if sc.zero_hit]
    spent = {o.problem_id: o.fte for o in res.outcomes}
    return [(sc.problem.id, b, spent[sc.problem.id], len(tok(prompt_for(sc, tok), add_special_tokens=False).input_ids))
            for sc, b in zip(zero, budgets(zero, model, tok, cfg, "tiny-boxed"))]


def test_resample_and_hint_spend_their_matched_budget_in_tokens(tiny_model_dir, db_url, tmp_path, grader):
    """Matched compute per zero-hit prompt, in tokens (FTE): spent <= budget, and less than one more sample
    short of it (a sample costs at most cont_max_tokens generated tokens)."""
    from methods.hint import hinted_problem
    from methods.latentrevise.mining import render_prompt

    one_sample = SMALL["mine_max_tokens"]
    plain = lambda sc, tok: sc.prompt_text
    hinted = lambda sc, tok: render_prompt(hinted_problem(sc.problem.problem, sc.problem.answer, cfgs["hint"]),
                                           "tiny-boxed", tok)
    cfgs = {"resample": MatchedRescueConfig(**SMALL), "hint": HintConfig(**SMALL)}
    for name, rescuer, prompt_for in (("resample", rescue_resample, plain), ("hint", rescue_hint, hinted)):
        (tmp_path / name).mkdir()
        ctx = make_ctx(db_url, tmp_path / name, grader, lambda m: HFGenerator(m, None), name=name)
        res = mine(str(tiny_model_dir), PROBLEMS, cfgs[name], ctx, rescuer, name)
        rows = _budgets_and_spent(tiny_model_dir, res, cfgs[name], prompt_for)
        assert len(rows) == 3  # a random model: every prompt is zero-hit
        for pid, budget, spent, x in rows:
            assert spent > x, (name, pid)  # at least one sample was drawn
            assert spent <= budget and budget - spent < one_sample, (name, pid, budget, spent)


RIGHT = " so 2 + 2 = 4. The answer is \\boxed{4}."


class HintOnlyGenerator(PlantedGenerator):
    """Answers correctly (with a worked step) only when the hint is in the prompt text; records the prompts."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.seen: list[str] = []

    def generate(self, prompts, sampling, seeds=None, progress=False):
        self.seen += list(prompts)
        out = []
        for p in prompts:
            text = RIGHT if "Hint" in p else " 2 + 2 = 5. The answer is \\boxed{5}."
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            out.append([Completion(text, ids, "stop", 0) for _ in range(sampling.n)])
        return out


def test_hint_rescues_train_on_the_prompt_without_the_hint(tiny_model_dir, db_url, tmp_path, grader):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    gen = HintOnlyGenerator(tok)
    ctx = make_ctx(db_url, tmp_path, grader, lambda m: gen, name="hint")
    problems = [Problem("q0", "Compute 2 + 2.", "4")]
    res = mine(str(tiny_model_dir), problems, HintConfig(**SMALL, budget_fte_per_prompt=60.0), ctx, rescue_hint,
               "hint")
    unhinted = "Problem: Compute 2 + 2.\nSolution:"
    hinted = "Problem: Compute 2 + 2. (Hint: the final answer is 4.)\nSolution:"
    assert gen.seen[0] == unhinted and gen.seen[1] == hinted
    assert res.stats["n_zero_hit"] == 1 and res.stats["rescue_rate"] == 1.0  # rescued only thanks to the hint
    n = len(res.outcomes[0].trajectories)
    assert n >= 1 and res.pairs == [(unhinted, RIGHT)]
    with session_scope(ctx.db) as s:
        stored = s.query(Rollout).filter_by(run_id=ctx.run_id, source="hint").all()
        assert len(stored) == n and {r.prompt for r in stored} == {unhinted}


class PlantedEngine(PlantedGenerator):
    """PlantedGenerator with the engine interface GRPO needs (weight sync is a no-op)."""

    def update_weights(self, named):
        pass


@pytest.mark.parametrize("max_tokens", [12, 40])
def test_lr_grpo_end_to_end_inserts_rescued_samples(tiny_model_dir, db_url, tmp_path, grader, max_tokens):
    """lr-grpo with the real revision core: every group is zero-hit, the latent continuation is correct, so
    each group gets exactly one (deduplicated, non-leaky) rescued sample and the update is not a no-op.
    With max_tokens=12 the prefix + continuation is longer than the cap: cut there, no eos (issue 15.5)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from methods.latentrevise.methods import LRGRPO, LRGRPOConfig

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ctx = make_ctx(db_url, tmp_path, grader, lambda m: PlantedEngine(tok), name="lr-grpo")
    problems = [Problem(f"q{i}", f"Compute 2 + 2. ({i})", "4") for i in range(3)]
    cfg = LRGRPOConfig(steps=2, prompts_per_step=3, group_size=4, max_tokens=max_tokens, lr=3e-3, micro_batch_size=8,
                       save_every=0, store_rollouts="all", insert_per_group=2, **LATENT)
    ckpt = LRGRPO().train(str(tiny_model_dir), problems, cfg, ctx)
    with session_scope(ctx.db) as s:
        steps = s.query(TrainStep).filter_by(run_id=ctx.run_id, phase="grpo").order_by(TrainStep.step).all()
        assert [r.step for r in steps] == [1, 2]
        for r in steps:
            assert r.zero_hit_frac == 1.0 and r.reward_mean == 0.0  # policy samples are all wrong
            assert r.extra["off_policy_samples"] == 3  # one distinct clean rescue per group (discrete ones leak)
            assert r.extra["trained_samples"] == 3 * 5  # advantages are no longer all zero
            assert r.extra["off_policy_truncated"] == (3 if max_tokens == 12 else 0)
            assert 0 < r.extra["off_policy_loss_share"] < 1
        mining = s.query(TrainStep).filter_by(run_id=ctx.run_id, phase="mining").order_by(TrainStep.step).all()
        assert [m.step for m in mining] == [1, 2] and all(m.extra["rescue"]["rescue_rate"] == 1.0 for m in mining)
        assert s.query(Revision).filter_by(run_id=ctx.run_id).count() == 2 * 3
        revised = s.query(Rollout).filter_by(run_id=ctx.run_id, source="revised").all()
        assert len(revised) == 2 * 3
        for r in revised:  # never longer than a policy sample may be
            assert len(tok(r.completion, add_special_tokens=False).input_ids) <= max_tokens
            assert r.completion.endswith("so 2 + 2 = 4. The answer is \\boxed{4}.") == (max_tokens == 40)
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(ckpt).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_lr_grpo_replace_mode_and_clipped_policy_prob_weights(tiny_model_dir, db_url, tmp_path, grader):
    """insert_mode="replace" keeps the group size; policy-prob weights (exp of the mean token log-prob of a
    random model, far below 1) are clipped at off_policy_weight_max only when they exceed it."""
    from transformers import AutoTokenizer

    from methods.latentrevise.methods import LRGRPO, LRGRPOConfig

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    problems = [Problem(f"q{i}", f"Compute 2 + 2. ({i})", "4") for i in range(3)]
    base = dict(steps=1, prompts_per_step=3, group_size=4, max_tokens=40, lr=3e-3, micro_batch_size=8, save_every=0,
                insert_per_group=2, insert_mode="replace", off_policy_weighting="policy-prob", **LATENT)
    weights = {}
    for cap in (None, 1e-6):
        (tmp_path / str(cap)).mkdir()
        ctx = make_ctx(db_url, tmp_path / str(cap), grader, lambda m: PlantedEngine(tok), name=f"lr-grpo-{cap}")
        LRGRPO().train(str(tiny_model_dir), problems, LRGRPOConfig(**base, off_policy_weight_max=cap), ctx)
        with session_scope(ctx.db) as s:
            (row,) = s.query(TrainStep).filter_by(run_id=ctx.run_id, phase="grpo").all()
            assert row.extra["off_policy_samples"] == 3 and row.extra["trained_samples"] == 3 * 4  # size kept
            weights[cap] = row.extra["off_policy_weight_mean"]
    assert 1e-6 < weights[None] < 0.5 and weights[1e-6] == pytest.approx(1e-6)


def test_lr_sft_end_to_end_and_resume_reuses_cached_mining_pairs(tiny_model_dir, db_url, tmp_path, grader):
    """lr-sft mines with the planted engine, trains on reference + rescued pairs; a restart of the same run
    reads mined_pairs.json and makes no engine (mining is not repeated)."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from methods.latentrevise.methods import LRSFT, LRSFTConfig

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    problems = [Problem(f"q{i}", f"Compute 2 + {i}.", str(2 + i), {"solution": f"2 + {i} = {2 + i}."})
                for i in range(6)]
    cfg = LRSFTConfig(epochs=1, batch_size=4, micro_batch_size=4, lr=1e-3, response_prefix=" ", max_len=64,
                      heldout_frac=0.2, **LATENT)
    made = []
    ctx = make_ctx(db_url, tmp_path, grader, lambda m: made.append(m) or PlantedEngine(tok), name="lr-sft")
    ckpt = LRSFT().train(str(tiny_model_dir), problems, cfg, ctx)
    pairs = json.loads((Path(tmp_path) / "mined_pairs.json").read_text())
    assert len(made) == 1 and pairs and all(r.endswith("The answer is \\boxed{4}.") for _, r in pairs)
    with session_scope(ctx.db) as s:
        held = s.query(TrainStep).filter_by(run_id=ctx.run_id, phase="sft_heldout").all()
        assert len(held) == 2 and held[0].extra["extra_dropped"] + len(pairs) >= len(pairs)
        n_steps = s.query(TrainStep).filter_by(run_id=ctx.run_id, phase="sft").count()
    assert n_steps == -(-(5 + len(pairs) - held[0].extra["extra_dropped"]) // 4)  # 5 training problems + rescues
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(ckpt).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    def no_engine(m):
        raise AssertionError("the restart must not mine again")

    LRSFT().train(str(tiny_model_dir), problems, cfg, make_ctx(db_url, tmp_path, grader, no_engine, name="lr-sft"))


# ------------------------------------------------------------------------------------------------
# the control arm, dedupe, honest latent text, latent leakage, the step filter, shared accounting
# ------------------------------------------------------------------------------------------------

class Counting:
    """Wraps a generator and records the kind of every request after screening (ids | embeds)."""

    def __init__(self, gen):
        self.gen, self.tokenizer, self.kinds = gen, gen.tokenizer, []

    def generate(self, prompts, sampling, seeds=None, progress=False):
        self.kinds += ["text" if isinstance(p, str) else "embeds" if isinstance(p, torch.Tensor) else "ids"
                       for p in prompts]
        return self.gen.generate(prompts, sampling, seeds=seeds, progress=progress)

    def close(self):
        pass


@pytest.mark.parametrize("over, latent_sampled", [
    (dict(fw_steps=0), False),  # K=0: p' = p and Z = E[p]: both revised arms repeat the control arm
    (dict(step_rule="gap-topm", flip_gamma=1.0), False),  # Z stays a vertex: latent = discrete
    (dict(step_rule="harmonic"), True),  # Z is a mixture: the latent arm is its own
])
def test_duplicate_arms_are_not_sampled_and_their_cost_is_counted_as_saved(tiny_model_dir, db_url, tmp_path, grader,
                                                                           over, latent_sampled):
    gen = Counting(HFGenerator(str(tiny_model_dir), None))
    ctx = make_ctx(db_url, tmp_path, grader, lambda m: gen)
    res = mine(str(tiny_model_dir), PROBLEMS, LatentReviseConfig(**{**SMALL, **over}), ctx, rescue_latentrevise,
               "latentrevise")
    revs = [r for o in res.outcomes for r in o.revisions]
    n_changed = sum(r["p_changed"] for r in revs)
    after_screen = gen.kinds[len(PROBLEMS):]
    # the control arm (ids), the discrete arm only where p' != p, the latent arm (embeddings) only off-vertex
    assert after_screen.count("ids") == len(revs) + n_changed
    assert after_screen.count("embeds") == (len(revs) if latent_sampled else 0)
    for r in revs:
        arms = r["arms"]
        assert arms["discrete"]["same_as"] == (None if r["p_changed"] else "unrevised")
        if not latent_sampled:
            assert arms["latent"]["same_as"] in ("discrete", "unrevised") and arms["latent"] == {
                **arms[arms["latent"]["same_as"]], "same_as": arms["latent"]["same_as"]}
        saved_arms = sum(a["same_as"] is not None for a in arms.values())
        assert (r["dedup_saved_fte"] > 0) == (saved_arms > 0)
    if over.get("fw_steps") == 0:  # nothing but the control arm is spent; twice its cost is saved
        assert all(r["fte_continue"] == 0 and r["dedup_saved_fte"] == pytest.approx(2 * r["fte_control"])
                   for r in revs)
    assert res.stats["dedup_saved_fte"] == pytest.approx(sum(r["dedup_saved_fte"] for r in revs))


class ScriptedGenerator(PlantedGenerator):
    """Screening: wrong. From token ids: `ids_text`; from prompt embeddings: `latent_text`."""

    def __init__(self, tokenizer, latent_text, ids_text=" 1 + 1 = 3. The answer is \\boxed{3}."):
        super().__init__(tokenizer)
        self.latent_text, self.ids_text = latent_text, ids_text

    def generate(self, prompts, sampling, seeds=None, progress=False):
        out = []
        for p in prompts:
            text = (" 1 + 1 = 3. The answer is \\boxed{3}." if isinstance(p, str) else
                    self.latent_text if isinstance(p, torch.Tensor) else self.ids_text)
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            out.append([Completion(text, ids, "stop", 0) for _ in range(sampling.n)])
        return out


def _mine_scripted(tiny_model_dir, db_url, tmp_path, grader, latent_text, problems=None, **over):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ctx = make_ctx(db_url, tmp_path, grader, lambda m: ScriptedGenerator(tok, latent_text))
    cfg = LatentReviseConfig(**{**SMALL, "step_rule": "harmonic", **over})  # Z off-vertex: a real latent arm
    return mine(str(tiny_model_dir), problems or [Problem("q0", "Compute 2 + 2.", "4")], cfg, ctx,
                rescue_latentrevise, "latentrevise"), cfg, ctx


@pytest.mark.parametrize("margin, honest", [(1e9, True), (-1e9, False)])
def test_latent_text_is_trained_on_only_when_rescoring_says_p_prime_produces_it(tiny_model_dir, db_url, tmp_path,
                                                                               grader, margin, honest):
    res, cfg, ctx = _mine_scripted(tiny_model_dir, db_url, tmp_path, grader, " so 2 + 2 = 4. The answer is \\boxed{4}.",
                                   latent_text_margin=margin)
    latent = [t for o in res.outcomes for t in o.trajectories if t.mode == "latent"]
    assert latent and all(t.honest is honest for t in latent)
    with session_scope(ctx.db) as s:
        rev = s.query(Revision).filter_by(run_id=ctx.run_id).one()
        z = [c for c in rev.continuations if c["arm"] == "latent"]
        assert all(c["honest"] is honest and c["lp_text"] <= 0 and c["lp_latent"] <= 0 for c in z)
        assert rev.config["_stats"]["arms"]["latent"]["correct"] == 2  # counted in the arm either way
    latent_pairs = [p for p in res.pairs if p[1].endswith("so 2 + 2 = 4. The answer is \\boxed{4}.")]
    assert bool(latent_pairs) == honest


def test_a_latent_continuation_that_opens_with_the_answer_is_flagged(tiny_model_dir, db_url, tmp_path, grader):
    res, _, _ = _mine_scripted(tiny_model_dir, db_url, tmp_path, grader, " 4. The answer is \\boxed{4}.",
                               latent_text_margin=1e9)
    latent = [t for o in res.outcomes for t in o.trajectories if t.mode == "latent"]
    assert latent and all(t.leakage for t in latent)
    assert res.pairs == []  # the discrete ones are bare restatements (rule B), the latent ones open with 4


def test_false_steps_are_flagged_on_arith_problems_and_filtered(tiny_model_dir, db_url, tmp_path, grader):
    arith = [Problem("a0", "Compute 2 + 2.", "4", {"expr": "2+2", "kind": "chain2"})]
    false_step = " so 2 + 2 = 5. The answer is \\boxed{4}."  # graded correct, arithmetic false
    res, cfg, _ = _mine_scripted(tiny_model_dir, db_url, tmp_path, grader, false_step, problems=arith,
                                 latent_text_margin=1e9)
    latent = [t for o in res.outcomes for t in o.trajectories if t.mode == "latent"]
    assert latent and all(t.valid_steps is False for t in latent)
    assert res.stats["valid_step_rate"] == 0.0 and res.pairs == []
    assert training_pairs(res.outcomes, dataclasses.replace(cfg, step_filter=False, include_leaky=True))


def test_a_sampling_request_pays_its_prompt_once(tiny_model_dir, grader):
    from transformers import AutoTokenizer

    from methods.latentrevise.mining import Screened, sampling_fte
    from methods.resample import sample_and_verify

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    gen = ScriptedGenerator(tok, "", ids_text="")
    sc = Screened(PROBLEMS[0], "Problem: x\nSolution:", [1, 2, 3], [], [False])
    ctx = SimpleNamespace(seed=0, template="tiny-boxed", grader=grader, progress=False)
    (o,) = sample_and_verify([sc], [sc.prompt_text], [5], gen, tok, MatchedRescueConfig(**SMALL), ctx, "resample", 0)
    x = len(tok(sc.prompt_text, add_special_tokens=False).input_ids)
    wrong = len(tok(" 1 + 1 = 3. The answer is \\boxed{3}.", add_special_tokens=False).input_ids)
    assert o.fte == x + 5 * wrong == sampling_fte(x, [Completion("", [0] * wrong, "stop", 0)] * 5)


class GuideAwareGenerator:
    """Text prompts only: continues right when the prompt holds the guide's first step, else answers 3."""

    def __init__(self, tokenizer):
        self.tokenizer, self.prompts, self.ns = tokenizer, [], []

    def generate(self, prompts, sampling, seeds=None, progress=False):
        out = []
        for p in prompts:
            self.prompts.append(p)
            self.ns.append(sampling.n)
            text = " 21 + 5 = 26. The answer is \\boxed{26}." if p.endswith("12 + 9 = 21.") else \
                " 1 + 1 = 3. The answer is \\boxed{3}."
            out.append([Completion(text, self.tokenizer(text, add_special_tokens=False).input_ids, "stop", 0)
                        for _ in range(sampling.n)])
        return out

    def close(self):
        pass


def test_guided_prefix_continues_from_the_reference_prefix_at_the_matched_budget(tiny_model_dir, grader):
    """13.7: the guide is the first part of the solution without the answer; n fits the budget; the trajectory is
    guide + continuation on the UNGUIDED prompt; a problem without a solution is plain resampling."""
    from transformers import AutoTokenizer

    from methods.guided_prefix import GuidedPrefixConfig, guide_text, rescue_guided_prefix
    from methods.latentrevise.mining import Screened, rescue_stats, sampling_fte

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    solution = "12 + 9 = 21. 21 + 5 = 26. The answer is \\boxed{26}."
    guided = Problem("g0", "Compute 12 + 9 + 5.", "26", {"solution": solution, "expr": "12+9+5"})
    plain = Problem("g1", "Compute 12 + 9 + 5.", "26", {"expr": "12+9+5"})
    n_all = len(tok(" " + solution, add_special_tokens=False).input_ids)
    frac = len(tok(" 12 + 9 = 21.", add_special_tokens=False).input_ids) / n_all  # the guide: the first step
    assert guide_text(solution, "26", tok, frac) == " 12 + 9 = 21."
    assert guide_text(solution, "26", tok, 0.95) == " 12 + 9 = 21."  # whole steps, none stating the answer
    assert guide_text(solution, "26", tok, frac * 0.8) == ""  # not even one whole step
    assert guide_text(solution, "21", tok, frac) == ""  # never the gold answer as a number
    wrong = Completion(" 1 + 1 = 3. The answer is \\boxed{3}.", [0] * 20, "stop", 0)
    prompt = "Problem: Compute 12 + 9 + 5.\nSolution:"
    x = len(tok(prompt, add_special_tokens=False).input_ids)
    zero = [Screened(p, prompt, [0] * x, [wrong, wrong], [False, False]) for p in (guided, plain)]
    # cont_max_tokens 40: the stub's continuations (~20 tokens) fit the cap, as an engine's always do
    cfg = GuidedPrefixConfig(**SMALL, cont_max_tokens=40, budget_fte_per_prompt=200.0, guide_frac=frac)
    ctx = SimpleNamespace(seed=0, template="tiny-boxed", grader=grader, progress=False)
    gen = GuideAwareGenerator(tok)
    out = rescue_guided_prefix(zero, None, tok, gen, cfg, ctx)
    g = len(tok(" 12 + 9 = 21.", add_special_tokens=False).input_ids)
    xg = len(tok(prompt + " 12 + 9 = 21.", add_special_tokens=False).input_ids)
    o_guided, o_plain = out
    n_guided, n_plain = o_guided.n_samples, o_plain.n_samples
    cap = cfg.cont_max_tokens or cfg.mine_max_tokens  # the worst case of one sample (resample.sample_cap)
    for o in out:  # matched compute in tokens: never over the budget, and short of it by less than one sample
        assert o.fte <= 200.0 and 200.0 - o.fte < cap, (o.fte, cap)
    assert prompt + " 12 + 9 = 21." in gen.prompts and prompt in gen.prompts
    assert len(o_guided.trajectories) == n_guided and not o_plain.trajectories
    t = o_guided.trajectories[0]
    assert t.prompt == prompt and t.response == " 12 + 9 = 21. 21 + 5 = 26. The answer is \\boxed{26}."
    assert t.mode == "guided" and t.source == "guided-prefix" and not t.leakage and t.valid_steps is True
    cont = len(tok(" 21 + 5 = 26. The answer is \\boxed{26}.", add_special_tokens=False).input_ids)
    assert t.tokens == g + cont
    assert o_guided.fte == sampling_fte(xg, [Completion("", [0] * cont, "stop", 0)] * n_guided)
    # the per-prompt counts the paired tables read (free-sample accuracy, rescued)
    assert (o_guided.n_samples, o_guided.n_correct, o_plain.n_samples, o_plain.n_correct) == (n_guided, n_guided,
                                                                                              n_plain, 0)
    per = rescue_stats("guided-prefix", zero, out)["per_prompt"]
    assert per["g1"] == {"n": n_plain, "correct": 0, "fte": o_plain.fte, "rescued": False}
    with pytest.raises(ValueError, match="guide_frac"):
        GuidedPrefixConfig(guide_frac=1.0)


def test_guided_prefix_is_a_registered_rescue_method():
    from methods.registry import build_config, get_method
    from repro.catalog import RESCUE_METHODS

    cls = get_method("guided-prefix")
    assert cls.source == "guided-prefix" and "guided-prefix" in RESCUE_METHODS
    assert build_config(cls, {"guide_frac": 0.25}).guide_frac == 0.25
