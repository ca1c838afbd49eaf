"""Synthetic step-by-step integer arithmetic: the tiny preset's benchmarks, train prompts and corpus.

The real benchmarks are word problems with worked solutions ending in `\\boxed{answer}`; this
family has the same shape at a size a 0.5M-parameter model learns on a CPU in minutes:

    Problem: Compute (23 + 45) * 3.
    Solution: 23 + 45 = 68. 68 * 3 = 60 * 3 + 8 * 3 = 180 + 24 = 204. The answer is \\boxed{204}.<|im_end|>

Difficulty comes from the number of operations, digits, carries, parentheses and multiplication
by a digit, and the phrasing: in the medium and hard tiers 30 % of the +/- chains and
multiplications are short stories ("Ana has 23 apples. Then Ana gets 45 more. ...", `WORD_PROB`);
the rest read "Compute {e}.". Changing either changes every split's texts. The tiers are a mix
on purpose: a tiny base model solves 1-2 digit addition chains most of the time and 3-digit /
multiplication / parenthesized ones rarely, so `arith-hard` and part of `arith-train` hold
zero-hit prompts (every sample wrong) that are still solvable now and then - the regime the paper is about.

Splits are disjoint by construction: a problem's split is a hash of its canonical expression
(`meta["expr"]`), so an expression never appears in two splits, whatever its phrasing or seed.
Eval tiers take buckets 0-1 of 20, training prompts 2-3, the pretraining corpus 4-19.

Reflection documents (issue 13.6). The paper reports that revised continuations grow longer and
reflect on themselves; a corpus without any self-correction cannot show that. So a share
`reflect_frac` of the pretraining documents (0 by default here; the tiny base model's
PretrainConfig sets it) is a worked solution that slips once and corrects itself:

    Solution: 23 + 45 = 69. Wait, let me check: 23 + 45 = 68. 68 * 3 = ... The answer is \\boxed{204}.

One step (chosen at random) first states a wrong result (`_slip`: off by 1 or 10, or one digit
changed, never negative), then `REFLECT_PHRASE` and the step again, right; later steps use the
right value and the boxed answer is the right one. methods/latentrevise/verify.py counts the slip
as RETRACTED (a false chain followed by the phrase), so the document's steps are valid. The
reflection documents come from their own random stream: with `reflect_frac=0` the corpus is the
same document for document as before the option existed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable

from .registry import Problem, register_generated

PROMPT_TEMPLATE = "Problem: {problem}\nSolution:"  # the `tiny-boxed` template (harness/prompts.py)
EOS = "<|im_end|>"  # eos of the tokenizer built by repro/tiny/model.py
TIERS = ("easy", "medium", "hard")
EVAL_SIZE = 100
TRAIN_SIZE = 1024
SPLIT_BUCKETS = {"eval": range(0, 2), "train": range(2, 4), "corpus": range(4, 20)}
N_BUCKETS = 20


@dataclass(frozen=True)
class Item:
    """One generated problem before phrasing: canonical expression, worked steps, answer."""

    kind: str
    expr: str  # canonical, e.g. "(23+45)*3": the split key
    shown: str  # as written in the problem, e.g. "(23 + 45) * 3"
    steps: tuple[str, ...]
    answer: int
    operands: tuple[int, ...]
    ops: tuple[str, ...]
    parens: bool
    carries: int


# ------------------------------------------------------------------------------------------
# worked steps
# ------------------------------------------------------------------------------------------

def _carries(a: int, b: int, op: str) -> int:
    """Carries (addition) or borrows (subtraction) of the column algorithm: what makes it hard."""
    count, carry = 0, 0
    while a or b:
        da, db = a % 10, b % 10
        if op == "+":
            carry = 1 if da + db + carry >= 10 else 0
        else:
            carry = 1 if da - db - carry < 0 else 0
        count += carry
        a, b = a // 10, b // 10
    return count


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _step(a: int, op: str, b: int) -> str:
    """One line of the solution; multiplication by a digit is broken down by place value."""
    if op == "*" and a >= 10:
        digits = str(a)
        parts = [int(d) * 10 ** (len(digits) - 1 - i) for i, d in enumerate(digits) if d != "0"]
        if len(parts) > 1:
            return (f"{a} * {b} = " + " + ".join(f"{p} * {b}" for p in parts) + " = "
                    + " + ".join(str(p * b) for p in parts) + f" = {a * b}.")
    return f"{a} {op} {b} = {_apply(a, op, b)}."


def _num(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)


# ------------------------------------------------------------------------------------------
# problem kinds: each returns an Item; subtraction never goes below zero
# ------------------------------------------------------------------------------------------

def _chain(rng: random.Random, digit_choices: tuple[int, ...], n_operands: int) -> Item:
    value = _num(rng, rng.choice(digit_choices))
    operands, ops, steps, carries = [value], [], [], 0
    for _ in range(n_operands - 1):
        b = _num(rng, rng.choice(digit_choices))
        op = rng.choice("+-")
        if op == "-" and b > value:
            op = "+"
        carries += _carries(value, b, op)
        steps.append(_step(value, op, b))
        value = _apply(value, op, b)
        operands.append(b)
        ops.append(op)
    shown = " ".join([str(operands[0])] + [f"{o} {x}" for o, x in zip(ops, operands[1:])])
    return Item(f"chain{n_operands}", shown.replace(" ", ""), shown, tuple(steps), value,
                tuple(operands), tuple(ops), False, carries)


def _mul(rng: random.Random, digits: int, tail: bool) -> Item:
    """a * d, optionally followed by +/- c (a has `digits` digits, d is one digit 2-9)."""
    a, d = _num(rng, digits), rng.randint(2, 9)
    value, steps, operands, ops = a * d, [_step(a, "*", d)], [a, d], ["*"]
    carries = 0
    if tail:
        c = _num(rng, 2)
        op = rng.choice("+-") if c <= value else "+"
        carries += _carries(value, c, op)
        steps.append(_step(value, op, c))
        value = _apply(value, op, c)
        operands.append(c)
        ops.append(op)
    shown = " ".join([str(a)] + [f"{o} {x}" for o, x in zip(ops, operands[1:])])
    return Item("mul" + ("+tail" if tail else ""), shown.replace(" ", ""), shown, tuple(steps), value,
                tuple(operands), tuple(ops), False, carries)


def _paren(rng: random.Random, digits: int) -> Item:
    """(a +/- b) * d or a - (b + c): the inner operation first, as the steps show."""
    if rng.random() < 0.5:
        a, b, d = _num(rng, digits), _num(rng, digits), rng.randint(2, 9)
        op = rng.choice("+-") if b <= a else "+"
        inner = _apply(a, op, b)
        steps = (_step(a, op, b), _step(inner, "*", d))
        shown = f"({a} {op} {b}) * {d}"
        return Item("paren-mul", shown.replace(" ", ""), shown, steps, inner * d, (a, b, d), (op, "*"),
                    True, _carries(a, b, op))
    b, c = _num(rng, digits), _num(rng, digits)
    a = rng.randint(b + c, max(b + c, 10 ** (digits + 1) - 1))  # keeps the result >= 0
    steps = (_step(b, "+", c), _step(a, "-", b + c))
    shown = f"{a} - ({b} + {c})"
    return Item("paren-sub", shown.replace(" ", ""), shown, steps, a - b - c, (a, b, c), ("+", "-"),
                True, _carries(b, c, "+") + _carries(a, b + c, "-"))


# tier -> list of (weight, maker); weights are relative within the tier
KINDS: dict[str, list[tuple[float, Callable[[random.Random], Item]]]] = {
    "easy": [  # 1-digit chains and 2-digit +/- 1-digit
        (1.0, lambda r: _chain(r, (1,), 2)),
        (2.0, lambda r: _chain(r, (1,), 3)),
        (2.0, lambda r: _chain(r, (1, 2), 2)),
    ],
    "medium": [  # 2-digit a +/- b and a +/- b +/- c
        (1.0, lambda r: _chain(r, (2,), 2)),
        (1.0, lambda r: _chain(r, (2,), 3)),
        (1.0, lambda r: _chain(r, (1, 2), 3)),
    ],
    "hard": [  # 3 digits, a multiplication by a digit, parentheses
        (1.0, lambda r: _chain(r, (2, 3), 2)),
        (1.0, lambda r: _chain(r, (2,), 4)),
        (1.0, lambda r: _mul(r, 2, tail=False)),
        (1.0, lambda r: _mul(r, 2, tail=True)),
        (1.0, lambda r: _paren(r, 1)),
        (1.0, lambda r: _paren(r, 2)),
    ],
}
WORD_PROB = {"easy": 0.0, "medium": 0.3, "hard": 0.3}  # share of story phrasings (chains and a * d only)


# ------------------------------------------------------------------------------------------
# phrasing
# ------------------------------------------------------------------------------------------

SYMBOLIC = ("Compute {e}.",)  # was also "What is {e}?", "Evaluate {e}.", "Find the value of {e}."
NAMES = ("Ana", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Ivy")
THINGS = ("apples", "marbles", "coins", "stickers", "books", "shells")


def _word_text(item: Item, rng: random.Random) -> str | None:
    """A short story for plain +/- chains and a * d; None when the kind has no story form."""
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    if item.kind.startswith("chain"):
        parts = [f"{name} has {item.operands[0]} {thing}."]
        for op, x in zip(item.ops, item.operands[1:]):
            parts.append(f"Then {name} gets {x} more." if op == "+" else f"Then {name} gives away {x}.")
        return " ".join(parts) + f" How many {thing} does {name} have now?"
    if item.kind == "mul":
        a, d = item.operands
        return f"{name} has {d} bags with {a} {thing} in each bag. How many {thing} is that in total?"
    return None


def _phrase(item: Item, tier: str, rng: random.Random) -> tuple[str, bool]:
    if rng.random() < WORD_PROB[tier]:
        text = _word_text(item, rng)
        if text:
            return text, True
    return rng.choice(SYMBOLIC).format(e=item.shown), False


def solution_text(item: Item) -> str:
    return " ".join(item.steps) + f" The answer is \\boxed{{{item.answer}}}."


REFLECT_PHRASE = "Wait, let me check: "  # verify.py's _REFLECT recognizes it after a false chain


def _slip(value: int, rng: random.Random) -> int:
    """A plausible wrong result for `value`: off by 1 or 10, or one digit changed; >= 0 and != value."""
    digits = str(value)
    i = rng.randrange(len(digits))
    allowed = [d for d in "0123456789" if d != digits[i] and not (d == "0" and i == 0 and len(digits) > 1)]
    changed = digits[:i] + rng.choice(allowed) + digits[i + 1:]  # no leading zero
    options = [v for v in (value + 1, value - 1, value + 10, value - 10, int(changed)) if v >= 0 and v != value]
    return rng.choice(options)


def reflection_text(item: Item, rng: random.Random) -> str:
    """A worked solution that slips at one step, notices it (`REFLECT_PHRASE`) and redoes the step right."""
    i = rng.randrange(len(item.steps))
    step = item.steps[i]
    head, value = step[: step.rfind("= ") + 2], int(step[step.rfind("= ") + 2:].rstrip("."))
    wrong = f"{head}{_slip(value, rng)}."
    steps = [*item.steps[:i], wrong, REFLECT_PHRASE + step, *item.steps[i + 1:]]
    return " ".join(steps) + f" The answer is \\boxed{{{item.answer}}}."


def split_of(expr: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(expr.encode()).digest()[:4], "little") % N_BUCKETS
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def _make(tier: str, rng: random.Random) -> tuple[Item, str, bool]:
    weights, makers = zip(*KINDS[tier])
    item = rng.choices(makers, weights=weights)[0](rng)
    text, word = _phrase(item, tier, rng)
    return item, text, word


def _to_problem(pid: str, tier: str, item: Item, text: str, word: bool) -> Problem:
    return Problem(pid, text, str(item.answer), {
        "solution": solution_text(item), "tier": tier, "kind": item.kind, "expr": item.expr,
        "operands": list(item.operands), "ops": list(item.ops), "parens": item.parens,
        "carries": item.carries, "word": word, "n_ops": len(item.ops),
    })


def generate(split: str, tiers: tuple[str, ...], n: int, seed: int, prefix: str) -> list[Problem]:
    """`n` distinct problems of `split`, tiers taken in turn; deterministic in (split, tiers, n, seed)."""
    if split not in SPLIT_BUCKETS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLIT_BUCKETS)}")
    rng = random.Random(f"arith/{split}/{seed}")
    problems, seen = [], set()
    for _attempt in range(n * 2000):
        if len(problems) == n:
            return problems
        tier = tiers[len(problems) % len(tiers)]
        item, text, word = _make(tier, rng)
        if split_of(item.expr) != split or text in seen:
            continue
        seen.add(text)
        problems.append(_to_problem(f"{prefix}-{len(problems):04d}", tier, item, text, word))
    raise RuntimeError(f"could not draw {n} distinct {split} problems from tiers {tiers}")


def format_prompt(problem_text: str) -> str:
    return PROMPT_TEMPLATE.replace("{problem}", problem_text)


def format_document(problem: Problem) -> str:
    """The exact pretraining document: prompt, a space, the worked solution, eos."""
    return format_prompt(problem.problem) + " " + problem.meta["solution"] + EOS


def pretrain_corpus(n_docs: int, seed: int = 0,
                    mix: tuple[tuple[str, float], ...] = (("easy", 1.0), ("medium", 1.0), ("hard", 1.0)),
                    reflect_frac: float = 0.0) -> list[str]:
    """`n_docs` documents from the corpus split (disjoint from eval and train; repeats allowed); each is a
    reflection document (module docstring) with probability `reflect_frac`, drawn from its own stream."""
    if not 0.0 <= reflect_frac <= 1.0:
        raise ValueError(f"reflect_frac must be in [0, 1], got {reflect_frac}")
    rng = random.Random(f"arith/corpus/{seed}")
    reflect_rng = random.Random(f"arith/corpus-reflect/{seed}")
    tiers, weights = zip(*mix)
    docs = []
    while len(docs) < n_docs:
        tier = rng.choices(tiers, weights=weights)[0]
        item, text, word = _make(tier, rng)
        if split_of(item.expr) != "corpus":
            continue
        problem = _to_problem("corpus", tier, item, text, word)
        if reflect_frac and reflect_rng.random() < reflect_frac:
            problem.meta["solution"] = reflection_text(item, reflect_rng)
        docs.append(format_document(problem))
    return docs


def eval_tier(tier: str, n: int = EVAL_SIZE, seed: int = 0) -> list[Problem]:
    return generate("eval", (tier,), n, seed, f"arith-{tier}")


def train_prompts(n: int = TRAIN_SIZE, seed: int = 0) -> list[Problem]:
    return generate("train", TIERS, n, seed, "arith-train")


for _tier in TIERS:
    register_generated(f"arith-{_tier}", lambda t=_tier: eval_tier(t))
register_generated("arith-train", train_prompts)
