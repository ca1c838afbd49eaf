"""LatentRevise objectives and step rules on hand-made models: each objective's gradient points at the
token that is known to be better, each step rule changes p' as its docstring says, and the compute
accounting charges the padded batch."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from methods.latentrevise import core
from methods.latentrevise.core import ReviseConfig, ReviseItem, Reviser

# ------------------------------------------------------------------------------------------------
# a hand-made language model: one-hot embeddings, hidden state = running sum of the inputs,
# logits = M @ hidden, so M[u, v] is how much a v anywhere before raises u next
# ------------------------------------------------------------------------------------------------

CHARS = "pqagwb\\oxed{}"  # p: prompt; q: the better token; a: the failed prefix; g: gold; w: wrong; b: avoid w


class CharTok:
    def __init__(self):
        self.chars = ["<pad>", *CHARS]
        self.pad_token_id, self.all_special_ids = 0, [0]

    def __len__(self):
        return len(self.chars)

    def __call__(self, text, add_special_tokens=False):
        return SimpleNamespace(input_ids=[self.chars.index(c) for c in text])

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.chars[i] for i in ids if i != 0)


class _Body(torch.nn.Module):
    def __init__(self, emb):
        super().__init__()
        self.emb = emb

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache=False):
        x = self.emb(input_ids) if inputs_embeds is None else inputs_embeds
        return SimpleNamespace(last_hidden_state=x.cumsum(1), past_key_values=None)


class HandLM(torch.nn.Module):
    base_model_prefix = "body"

    def __init__(self, logits: dict[tuple[str, str], float]):
        super().__init__()
        tok = CharTok()
        V = len(tok)
        self.embed = torch.nn.Embedding(V, V)
        self.embed.weight.data = torch.eye(V)
        self.body = _Body(self.embed)
        self.head = torch.nn.Linear(V, V, bias=False)
        M = torch.zeros(V, V)
        for (nxt, cur), v in logits.items():
            M[tok.chars.index(nxt), tok.chars.index(cur)] = v
        self.head.weight.data = M

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.head


TOK = CharTok()
ids = lambda s: TOK(s).input_ids
# a one-token revisable prefix "a" (L = 1), one Frank-Wolfe step that flips the top-gap position
ONE_FLIP = dict(prefix_len=1, fw_steps=1, step_rule="gap-topm", flip_gamma=1.0, reuse_prompt_cache=False,
                gold_template="{answer}", keep_best=False, exclude_special=True, fluency_weight=0.0)
GOLD = dict(objective="gold-after-prefix", fluency_weight=0.0)  # the first reading, no fluency term


def revise_one(logits, rollout: str, gold: str = "g", contrast=None, **cfg):
    model = HandLM(logits)
    item = ReviseItem(ids("p"), ids(rollout), gold, contrast=contrast)
    return Reviser(model, TOK, ReviseConfig(**{**ONE_FLIP, **cfg})).revise([item])[0]


def picked(r) -> str:
    return TOK.decode(r.oracle_ids[0])


def test_gold_after_prefix_toward_picks_the_token_that_makes_gold_likely():
    r = revise_one({("g", "q"): 4.0}, "aw", objective="gold-after-prefix", loss_terms="gold")
    assert picked(r) == "q" and TOK.decode(r.discrete_ids) == "q"
    assert r.gold_loss[1] < r.gold_loss[0]  # the flip lowered the toward NLL
    assert r.objective == "gold-after-prefix"


def test_gold_after_prefix_away_picks_the_token_that_makes_the_failed_continuation_unlikely():
    r = revise_one({("w", "a"): 4.0, ("w", "b"): -4.0}, "aw", objective="gold-after-prefix", loss_terms="away")
    assert picked(r) == "b"
    assert r.away_loss[1] < r.away_loss[0]


def test_gold_in_rollout_targets_only_the_answer_span():
    item = ReviseItem(ids("p"), ids("a\\boxed{w}"), "g")
    name, rows = core.objective_rows(item, 1, ReviseConfig(**ONE_FLIP, objective="gold-in-rollout"), TOK, None)
    assert name == "gold-in-rollout"
    toward, away = rows
    assert TOK.decode(toward.suffix) == "\\boxed{g" and TOK.decode(toward.suffix[toward.start:toward.end]) == "g"
    assert TOK.decode(away.suffix) == "\\boxed{w" and TOK.decode(away.suffix[away.start:away.end]) == "w"
    assert not toward.away and away.away
    # without a box in the failed continuation: the answer appended to it, no away row
    name, rows = core.objective_rows(ReviseItem(ids("p"), ids("aww"), "g"), 1,
                                     ReviseConfig(**ONE_FLIP, objective="gold-in-rollout"), TOK, None)
    assert len(rows) == 1 and TOK.decode(rows[0].suffix) == "wwg" and (rows[0].start, rows[0].end) == (2, 3)


@pytest.mark.parametrize("terms, logits, best", [
    ("gold", {("g", "q"): 4.0}, "q"),  # make the reasoning end in g: q raises g at the box
    ("away", {("w", "b"): -4.0}, "b"),  # unlikelihood of the wrong answer w: b lowers w there
])
def test_gold_in_rollout_gradients_point_at_the_known_better_token(terms, logits, best):
    r = revise_one(logits, "a\\boxed{w}", objective="gold-in-rollout", loss_terms=terms)
    assert picked(r) == best


def test_self_contrast_moves_toward_the_correct_samples_and_falls_back_without_one():
    good, bad = ids("g"), ids("w")
    r = revise_one({("g", "q"): 4.0, ("w", "b"): -4.0}, "aw", objective="self-contrast", loss_terms="gold",
                   contrast=[(good, True), (bad, False)])
    assert r.objective == "self-contrast" and picked(r) == "q"
    r = revise_one({("g", "q"): 4.0, ("w", "b"): -4.0}, "aw", objective="self-contrast", loss_terms="away",
                   contrast=[(good, True), (bad, False)])
    assert picked(r) == "b"
    # no correct contrast sample: the fallback objective (gold-in-rollout: no box here, the answer appended)
    r = revise_one({("g", "q"): 4.0}, "aw", objective="self-contrast", contrast=[(bad, False)],
                   contrast_fallback="gold-in-rollout", loss_terms="gold")
    assert r.objective == "gold-in-rollout" and picked(r) == "q"


def test_fluency_direct_term_picks_the_models_own_next_token():
    # position 0 is predicted from the prompt alone: no gradient reaches Z, only the direct term moves it
    r = revise_one({("q", "p"): 4.0}, "aw", objective="fluency", fluency_weight=1.0)
    assert picked(r) == "q" and TOK.decode(r.discrete_ids) == "q"
    assert r.fluency_loss[1] < r.fluency_loss[0]
    assert r.gold_loss == [None, None] and r.away_loss == [None, None]


def test_an_example_without_any_objective_term_is_not_revised():
    # gold-in-rollout, away only, and no box to take the wrong answer from: nothing to optimize
    r = revise_one({("g", "q"): 4.0}, "aw", objective="gold-in-rollout", loss_terms="away")
    assert r.objective == "none" and r.discrete_ids == r.prefix_ids and r.moves == [0]


# ------------------------------------------------------------------------------------------------
# step rules: their stated effect on p'
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_model_dir, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(), tok


def make_items(tok):
    out = []
    for a, b in ((3, 7), (12, 14), (51, 2)):
        x = tok(f"Problem: {a}+{b}\nSolution:", add_special_tokens=False).input_ids
        wrong = a + b + 1
        y = tok(f" {a}+{b}={wrong}. The final answer is \\boxed{{{wrong}}}.", add_special_tokens=False).input_ids
        out.append(ReviseItem(x, y, str(a + b)))
    return out


def test_gap_topm_flips_at_most_m_positions_per_step_and_stays_a_vertex(tiny):
    model, tok = tiny
    E = model.get_input_embeddings().weight.detach()
    K, M = 3, 2
    cfg = ReviseConfig(fw_steps=K, step_rule="gap-topm", flip_positions=M, keep_best=False, prefix_frac=0.6)
    for r in Reviser(model, tok, cfg).revise(make_items(tok)):
        assert all(m <= M for m in r.moves) and sum(r.moves) > 0
        assert r.is_vertex and torch.allclose(r.iterate, E[torch.tensor(r.discrete_ids)], atol=1e-6)
        assert 0 < sum(a != b for a, b in zip(r.discrete_ids, r.prefix_ids)) <= K * M


def test_gcg_never_raises_the_objective_and_flips_one_token_per_step(tiny):
    model, tok = tiny
    cfg = ReviseConfig(**GOLD, fw_steps=4, step_rule="gcg", gcg_candidates=3, prefix_frac=0.6, away_weight=0.5)
    for r in Reviser(model, tok, cfg).revise(make_items(tok)):
        total = [g + 0.5 * a for g, a in zip(r.gold_loss, r.away_loss)]
        assert all(b <= a + 1e-6 for a, b in zip(total, total[1:])), total
        assert all(m <= 1 for m in r.moves) and r.is_vertex
        assert sum(a != b for a, b in zip(r.discrete_ids, r.prefix_ids)) <= sum(r.moves)


def test_const_small_step_keeps_p_and_harmonic_keeps_little_of_the_original(tiny):
    model, tok = tiny
    const = Reviser(model, tok, ReviseConfig(**GOLD, fw_steps=3, step_rule="const", step_const=0.1, keep_best=False))
    for r in const.revise(make_items(tok)):  # the original keeps 0.9^3 = 0.73 > 1/2 at every position
        assert r.discrete_ids == r.prefix_ids and r.changed_frac == 0.0 and not r.is_vertex
    harmonic = Reviser(model, tok, ReviseConfig(**GOLD, fw_steps=10, step_rule="harmonic", keep_best=False))
    checked = 0
    for r in harmonic.revise(make_items(tok)):  # 2 / ((K+1)(K+2)) = 1/66 left on the original token
        for i, t in enumerate(r.prefix_ids):
            if all(step[i] != t for step in r.oracle_ids):  # never re-picked by the oracle
                assert r.vertex_weights[i, 0].item() == pytest.approx(1 / 66, rel=1e-4)
                checked += 1
    assert checked > 0


def test_sample_discretization_is_seeded_per_item_and_draws_from_the_weights(tiny):
    model, tok = tiny
    cfg = ReviseConfig(fw_steps=3, step_rule="const", step_const=0.5, discretize="sample", keep_best=False)
    items = make_items(tok)
    for it in items:
        it.seed = 7
    a = Reviser(model, tok, cfg).revise(items)
    b = Reviser(model, tok, dataclasses.replace(cfg, revise_batch=1)).revise(items)
    for x, y in zip(a, b):
        assert x.discrete_ids == y.discrete_ids  # the draw does not depend on the batch
        for i, t in enumerate(x.discrete_ids):  # every drawn token is a vertex with positive weight
            assert t in x.vertex_ids[i][x.vertex_weights[i] > 0].tolist()


# ------------------------------------------------------------------------------------------------
# compute: the padded batch is charged, and predicted before running
# ------------------------------------------------------------------------------------------------

def test_batch_fte_charges_padding_and_prediction_matches(tiny):
    model, tok = tiny
    items = make_items(tok)
    cfg = ReviseConfig(fw_steps=2)
    reviser = Reviser(model, tok, cfg)
    together = reviser.revise(items)
    alone = [Reviser(model, tok, ReviseConfig(fw_steps=2, revise_batch=1)).revise([it])[0] for it in items]
    assert sum(r.fte for r in together) > sum(r.fte for r in alone)  # padding to the longest rollout is paid
    assert [r.fte for r in together] == pytest.approx(reviser.predict_fte(items))
    lay = core.batch_layout(items, cfg, tok, None, torch.device("cpu"))
    expected = reviser.fte(lay.x_ids.shape[1], int(lay.active.sum()), lay.R * lay.T_new, lay.R, n_prompts=lay.B)
    assert sum(r.fte for r in together) == pytest.approx(expected)


@pytest.mark.parametrize("bad", [dict(flip_positions=0), dict(flip_gamma=0.0), dict(gcg_candidates=0),
                                 dict(contrast_max=0), dict(fluency_weight=-1.0),
                                 dict(objective="fluency", fluency_weight=0.0),
                                 dict(hull=False, step_rule="gcg"), dict(hull=False, fluency_weight=1.0)])
def test_new_config_fields_are_checked(bad):
    with pytest.raises(ValueError, match="ReviseConfig: "):
        ReviseConfig(**bad)
