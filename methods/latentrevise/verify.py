"""Checks on rescued trajectories beyond the grader: answer leakage and, for arithmetic, true steps.

The grader only says that the final answer matches. Two ways a "correct" trajectory can still be
worthless as training data, each a pure function of text (and of the latent prefix's vertices):

Leakage (our rule; the abstract names the risk, not a test). A correct trajectory is flagged when
  (A) discrete prefix: the revision wrote the answer into p': p' contains "\\boxed" or the gold
      answer as a standalone number while the original prefix p did not (`prefix_leak`);
  (A') latent prefix: the answer's digits are spelled, position after position, by heavy vertices of
      the latent prefix (weight >= `leak_vertex_weight`), at least one of them a vertex the revision
      added, while p did not contain the answer (`vertex_leak`): the continuation can read the
      answer off Z even when p' (the heaviest vertices) does not show it;
  (B) the continuation restates the answer without reasoning: fewer than `leak_min_words` words
      before its answer sentence and the answer derived nowhere before it (`bare_restatement`);
      for a latent continuation whose Z is not a vertex of the hull, p' is not what the model read,
      so the prefix gets no credit: the continuation must derive the answer itself, and one that
      OPENS by stating the answer (its first number is the gold answer) is flagged (`latent_leak`).

Steps (arithmetic family; `check_steps`). Every chain "e0 = e1 = ... = ek" of integer expressions
(+, -, *, parentheses; the place-value lines "68 * 3 = 60 * 3 + 8 * 3 = 180 + 24 = 204" included) is
evaluated; a chain is FALSE when its sides differ, RETRACTED when a false chain is followed by a
reflection phrase ("Wait, let me check: ...", the self-correction documents of benchmarks/arith.py),
and UNGROUNDED when an operand of its first side is neither a number of the problem text nor a
result of an earlier chain. A trajectory's steps are valid when it has at least one chain, no false
(unretracted) chain, no ungrounded one, and its boxed answer equals the value of its last chain.
Story phrasings change the problem text, not the solution format, so they need nothing special:
their numbers ground the first step like the symbolic ones do.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from typing import Sequence

# ------------------------------------------------------------------------------------------------
# leakage
# ------------------------------------------------------------------------------------------------


def has_answer(text: str, gold: str) -> bool:
    """The gold answer as a standalone token of `text` (not inside a longer number or word)."""
    g = gold.strip()
    return bool(g) and re.search(r"(?<![\w.])" + re.escape(g) + r"(?![\w]|\.\d)", text) is not None


def prefix_leak(prefix_text: str, original_prefix: str, gold: str) -> bool:
    """Rule A: the revision wrote the answer (or a \\boxed) into the prefix."""
    return ("\\boxed" in prefix_text and "\\boxed" not in original_prefix) or \
        (has_answer(prefix_text, gold) and not has_answer(original_prefix, gold))


def bare_restatement(prefix_text: str, continuation: str, gold: str, min_words: int) -> bool:
    """Rule B: < `min_words` words before the answer sentence, and the answer is derived nowhere before it."""
    cut = continuation.rfind("\\boxed")
    reasoning = continuation[:cut] if cut >= 0 else continuation
    sentence = max(reasoning.rfind(". "), reasoning.rfind("\n"))  # drop the answer sentence's lead-in
    reasoning = reasoning[: sentence + 1] if sentence >= 0 else ""
    return len(reasoning.split()) < min_words and not has_answer(prefix_text + reasoning, gold)


def leak_check(prefix_text: str, original_prefix: str, continuation: str, gold: str, min_words: int) -> bool:
    """Rule A or rule B (a continuation of the discrete prefix p')."""
    return prefix_leak(prefix_text, original_prefix, gold) or \
        bare_restatement(prefix_text, continuation, gold, min_words)


def latent_leak(continuation: str, gold: str, min_words: int) -> bool:
    """Rule B for a continuation of a latent (non-vertex) prefix: no credit to p', and no opening answer."""
    first = re.search(r"-?\d+(?:\.\d+)?", continuation)
    opens = first is not None and first.group(0) == gold.strip()
    return opens or bare_restatement("", continuation, gold, min_words)


def vertex_leak(top: Sequence[Sequence[Sequence]], original: Sequence[str], gold: str, min_weight: float) -> bool:
    """Rule A': consecutive positions whose heavy vertices spell `gold`, one of them a new vertex.

    top: per revised position, [[token text, weight], ...] (ReviseResult.top_tokens); original: the
    unrevised token text at those positions."""
    g = gold.strip()
    if not g or has_answer("".join(original), g):
        return False
    options = [[(t.strip(), t != o) for t, w in pos if w >= min_weight and t.strip()] for pos, o in zip(top, original)]

    def spells(i: int, rest: str, used_new: bool) -> bool:
        if not rest:
            return used_new
        if i >= len(options):
            return False
        return any(rest.startswith(t) and spells(i + 1, rest[len(t):], used_new or new) for t, new in options[i])

    return any(spells(i, g, False) for i in range(len(options)))


# ------------------------------------------------------------------------------------------------
# arithmetic steps
# ------------------------------------------------------------------------------------------------

_TERM = r"\(?\s*-?\d+\s*\)?"
_EXPR = rf"{_TERM}(?:\s*[-+*×]\s*{_TERM})*"
_CHAIN = re.compile(rf"(?<![\w.]){_EXPR}(?:\s*=\s*{_EXPR})+")
_REFLECT = re.compile(r"^\W{0,4}(?:wait|let me check|check)\b", re.I)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _eval(expr: str) -> int | None:
    """Value of an integer expression of + - * and parentheses; None when it does not parse."""
    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(expr)

    try:
        return ev(ast.parse(expr.replace("×", "*"), mode="eval").body)
    except (SyntaxError, ValueError, RecursionError):
        return None


@dataclass(frozen=True)
class StepCheck:
    n_steps: int  # chains found
    n_false: int  # false chains not retracted by a reflection phrase
    n_retracted: int  # false chains followed by "Wait, let me check" (a noticed slip)
    n_ungrounded: int  # chains whose first side uses a number from nowhere
    answer_derived: bool  # the boxed answer equals the last chain's value

    @property
    def valid(self) -> bool:
        return self.n_steps > 0 and self.n_false == 0 and self.n_ungrounded == 0 and self.answer_derived


def _boxed(text: str) -> str | None:
    m = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return m[-1].strip() if m else None


def check_steps(text: str, problem: str = "") -> StepCheck:
    """The step check of the module docstring on one trajectory (prefix + continuation as text)."""
    known = {int(n) for n in re.findall(r"\d+", problem)}
    n_false = n_retracted = n_ungrounded = 0
    chains = list(_CHAIN.finditer(text))
    last = None
    for m in chains:
        sides = [s.strip() for s in m.group(0).split("=")]
        values = [_eval(s) for s in sides]
        if any(v is None for v in values):
            n_false += 1
            continue
        if len(set(values)) > 1:
            if _REFLECT.search(text[m.end():m.end() + 24]):
                n_retracted += 1
                continue  # the slip; the recheck after the phrase is its own chain
            n_false += 1
        if problem and any(int(n) not in known for n in re.findall(r"\d+", sides[0])):
            n_ungrounded += 1
        known |= {int(n) for n in re.findall(r"\d+", m.group(0))} | {values[-1]}  # derived from here on
        last = values[-1]
    boxed = _boxed(text)
    return StepCheck(len(chains), n_false, n_retracted, n_ungrounded,
                     last is not None and boxed is not None and boxed == str(last))


def is_arith(meta: dict | None) -> bool:
    """How a problem is known to be of the arithmetic family: benchmarks/arith.py sets meta["expr"]."""
    return bool(meta) and "expr" in meta
