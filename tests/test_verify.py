"""The checks on rescued trajectories: the arithmetic step checker on true and false arithmetic (the
reference solutions of the arith family, planted slips, retracted slips, ungrounded operands), and the
leakage rules on planted latent leaks."""

from __future__ import annotations

import pytest

from benchmarks.arith import eval_tier, train_prompts
from methods.latentrevise.verify import check_steps, is_arith, latent_leak, vertex_leak

PROBLEM = "Compute (23 + 45) * 3."
GOOD = "23 + 45 = 68. 68 * 3 = 60 * 3 + 8 * 3 = 180 + 24 = 204. The answer is \\boxed{204}."


def test_every_reference_solution_of_the_arith_family_checks():
    problems = train_prompts()[:400] + eval_tier("hard")  # chains, place-value lines, parentheses, stories
    assert any(p.meta["word"] for p in problems) and any("*" in p.meta["expr"] for p in problems)
    for p in problems:
        c = check_steps(" " + p.meta["solution"], p.problem)
        assert c.valid and c.n_steps == len(p.meta["solution"].split(". ")) - 1, (p.problem, p.meta["solution"], c)


def test_a_true_solution_with_place_value_lines_is_valid():
    c = check_steps(GOOD, PROBLEM)
    assert c.valid and c.n_steps == 2 and c.n_false == 0 and c.answer_derived


@pytest.mark.parametrize("text, why", [
    ("23 + 45 = 69. 69 * 3 = 60 * 3 + 9 * 3 = 180 + 27 = 207. The answer is \\boxed{207}.", "n_false"),
    ("23 + 45 = 68. 68 * 3 = 60 * 3 + 8 * 3 = 180 + 25 = 205. The answer is \\boxed{205}.", "n_false"),
    ("23 + 45 = 68. 68 * 3 = 60 * 3 + 8 * 3 = 180 + 24 = 204. The answer is \\boxed{204}. 1 + 1 = 3.", "n_false"),
    ("23 + 46 = 69. 69 * 3 = 60 * 3 + 9 * 3 = 180 + 27 = 207. The answer is \\boxed{207}.", "n_ungrounded"),
    ("23 + 45 = 68. 68 * 3 = 60 * 3 + 8 * 3 = 180 + 24 = 204. The answer is \\boxed{205}.", "answer"),
    ("The answer is \\boxed{204}.", "no steps"),
])
def test_false_or_unsupported_arithmetic_is_invalid(text, why):
    c = check_steps(text, PROBLEM)
    assert not c.valid
    if why in ("n_false", "n_ungrounded"):
        assert getattr(c, why) == 1
    elif why == "answer":
        assert not c.answer_derived and c.n_false == 0
    else:
        assert c.n_steps == 0


def test_a_retracted_slip_is_not_a_false_step():
    # the self-correction documents of benchmarks/arith.py: slip, "Wait, let me check:", the right value
    text = ("23 + 45 = 78. Wait, let me check: 23 + 45 = 68, not 78. 68 * 3 = 60 * 3 + 8 * 3 = 180 + 24 = 204. "
            "The answer is \\boxed{204}.")
    c = check_steps(text, PROBLEM)
    assert c.valid and c.n_retracted == 1 and c.n_false == 0
    # a false step NOT followed by the reflection phrase stays false
    assert check_steps(text.replace("Wait, let me check:", "So"), PROBLEM).n_false == 1


def test_story_phrasing_grounds_the_first_step_in_the_story_numbers():
    story = "Ana has 23 apples. Then Ana gets 45 more. How many apples does Ana have now?"
    assert check_steps("23 + 45 = 68. The answer is \\boxed{68}.", story).valid
    assert not check_steps("23 + 44 = 67. The answer is \\boxed{67}.", story).valid  # 44 is in no story


def test_arith_problems_are_recognized_by_their_meta():
    assert is_arith(train_prompts()[0].meta)
    assert not is_arith({"level": "Level 3"}) and not is_arith(None)


# ------------------------------------------------------------------------------------------------
# leakage rules on planted latent leaks
# ------------------------------------------------------------------------------------------------

def test_vertex_leak_reads_the_answer_off_heavy_new_vertices():
    # positions 2-4 of a latent prefix whose heavy vertices spell 204 (2 and 4 new, 0 the original)
    top = [[[" ", 1.0]], [["=", 1.0]], [["2", 0.6], ["1", 0.4]], [["0", 0.7], ["5", 0.3]], [["4", 0.5], ["7", 0.5]]]
    original = [" ", "=", "1", "0", "7"]
    assert vertex_leak(top, original, "204", 0.2)
    assert not vertex_leak(top, original, "204", 0.55)  # the 4 weighs only 0.5
    assert not vertex_leak(top, original, "999", 0.2)
    assert not vertex_leak([[["2", 1.0]], [["0", 1.0]], [["4", 1.0]]], ["2", "0", "4"], "204", 0.2)  # all original
    assert not vertex_leak(top, [" ", "=", "2", "0", "4"], "204", 0.2)  # p already said it


def test_latent_continuation_that_opens_with_the_answer_or_restates_it_leaks():
    assert latent_leak(" 204. The answer is \\boxed{204}.", "204", 3)  # opens by stating the answer
    assert latent_leak(" The answer is \\boxed{204}.", "204", 3)  # bare restatement, no credit to p'
    assert not latent_leak(" 68 * 3 = 60 * 3 + 8 * 3 = 180 + 24 = 204. The answer is \\boxed{204}.", "204", 3)
