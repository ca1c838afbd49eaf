r"""Grading: does a completion's final answer equal the gold answer? Built on math-verify.

The policy below is versioned: GRADER_POLICY_VERSION changes whenever a verdict can change, and it is
part of every evaluation's identity (through `Grader.settings()`). Every rule below has its tests in
tests/test_grading.py (the extraction rules by number), and its properties in tests/test_properties.py.

Extraction (what "the answer" of a completion is)
-------------------------------------------------
1. Boxes. `\boxed{...}` and `\fbox{...}` are boxes, also with a space before the brace (`\boxed {5}`,
   which LaTeX renders the same), braces balanced; a box inside a box is part of it, and a box whose
   whole content is one box is that box (`\boxed{\boxed{7}}` is 7).
2. The final statement. The answer is in the LAST box and the boxes joined to it: walking back from
   the last box, an earlier box belongs to the same statement when the text between the two is at most
   60 characters and holds no sentence end (". ", "! ", "? "), no blank line and no word of
   self-correction (no, not, wait, actually, rather, instead, but, however, wrong, mistake, correct...,
   oops, sorry, hmm, recheck, reconsider, redo, let). `x = \boxed{2} and y = \boxed{3}` is one
   statement; `\boxed{3}. That was wrong; so \boxed{5}` is two, and only the last one counts.
3. Multi-part answers. When the problem has several parts (its meta says `is_multiple_answer`, as 94 of
   OlympiadBench's 675 do, or its gold is a top-level comma list such as MATH's "1,-2"), the boxes of
   the final statement TOGETHER are the answer, joined as "a, b"; a self-correction still counts only
   its final statement, and a missing part is a wrong answer (math-verify compares the lists as sets).
   A tuple, interval or set gold ("(15,-29)", "(3,4]", "\{1,2\}") is one part, and so is a thousands
   separator ("58,500", "10,\!080"). For a single-part problem only the last box counts: math-verify's
   default merges `\boxed{1}, \boxed{2}` into {1, 2}; we read it as 2 (one answer, one box).
4. Fallback, only when there is no box (or the last box is never closed, e.g. a truncated generation):
   `fallback="anchored"` (the default) accepts final-answer statements only, the rightmost one winning:
     - "final answer is X", "final answer: X", "final answer = X", "Final answer: <= 80 chars> is X",
       "final answer is <= 60 chars>: X";
     - "Answer: X" / "**Answer:** X" / "Answer = X" at the start of a line;
     - "the (our, my) answer is X", "the answer to <= 60 chars> is X".
   X is what opens the text right after the statement: a LaTeX span ($...$, $$...$$, \(...\), \[...\],
   its content), or a plain answer starting like math (a digit, sign, backslash or bracket, or
   "x = ...") up to the next newline, punctuation followed by a space (". ", ", ", "; ", "! ", "? ") or
   word ("The answer is 17 apples" gives 17).
   So "To answer this we first try n = 17", "the answer is not 17", "Before the final answer, note
   n = 17" have no answer. It never takes a bare number from the text: math-verify's default "last
   number" fallback credits a rambling completion that happens to end in the right integer, which
   inflates pass@k at large k. `fallback="any"` restores math-verify's unanchored extraction (its
   default); `fallback="none"` accepts boxes only.
5. Otherwise the completion has no answer: extracted=None, correct=False (error stays None).

Normalization, applied to the extracted answer and to the gold alike, where math-verify's default is
wrong for us:
  - trailing periods are dropped: `\boxed{5.}` == 5 (math-verify fails to parse "5." and falls back
    to comparing the strings "5." and "5");
  - percent signs are dropped, never read as /100: `50\%` == `50`, but `50\%` != `0.5` and `0.5` !=
    `50\%` (MATH writes percent answers with and without `\%`; math-verify accepts all three as equal,
    crediting 0.5 as the answer to "what percent ...?");
  - plain scientific notation (`3e5`, `1.2E-3`, the whole answer) becomes `3\times10^{5}`:
    math-verify reads `3e5` as 3*e*5 with Euler's e.
Unit text (`30 \text{ km/h}`, `90^\circ`) is dropped by math-verify itself; OlympiadBench's `unit` and
`answer_type` are carried in the `AnswerSpec` for the record and change no verdict.

Equivalence
-----------
Both sides are parsed as `\boxed{<answer>}` by math-verify (LaTeX target, boxed first) and compared
with `math_verify.verify(gold, pred)` (float_rounding=6, strict=True), in that order: verify is not
symmetric (an assignment `x=5` in the prediction matches the gold `5`). Where OlympiadBench gives a
per-problem `error` (a tolerance), two plain numbers within it (|gold - pred| <= error * 1.01, the
OlympiadBench judge's rule) are equal too. For maj@k, two extracted answers are equivalent when either,
taken as the gold, accepts the other (`answers_equivalent`); `Grader.vote_labels` clusters them in
the worker processes, under the same per-comparison time limit (a timeout means "not equivalent").

Time limits
-----------
math-verify's own timeouts use `signal.alarm`, which only works in a main thread and which cancels
any outer alarm, so we switch them off and impose our own per-item limit: an interval timer whose
handler raises a BaseException (math-verify swallows every `Exception`). Grading runs in worker
PROCESSES (pebble), in their main threads, so the timer works there. In a worker the timer counts
the worker's CPU time (ITIMER_PROF): on a machine loaded by generation, a wall-clock limit timed out
ordinary pairs (measured: 3 of 1,500 at load 14 on 2 cores). Each task carries a batch of
pairs (IPC is amortized) and a hard limit of `timeout_s * len(batch) + hard_grace_s`, after which
pebble kills the worker (a C-level big-integer loop is deaf to signals). A batch that dies that way is
re-graded one pair per task, and a pair that dies alone gets error="timeout". Workers start with
`spawn` (never fork a process that may hold a CUDA context or vLLM threads) and an address-space limit
(`memory_limit_mb` above what a worker maps at start) so that a runaway answer fails with MemoryError
instead of swapping the machine. `workers=0` grades in the calling thread, which must be the main
thread (the timer needs it), with a wall-clock limit (process CPU time would count every other
thread) and no hard limit.
"""

from __future__ import annotations

import logging
import math
import re
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from importlib.metadata import version
from typing import Any, Iterator, Literal, Mapping, Sequence, Union

from .metrics import vote_labels

Fallback = Literal["anchored", "any", "none"]
GRADER_NAME = "math-verify/last-boxed"
# Bump whenever a verdict or a maj@k vote can change. 1: last box, math-verify's anchored fallback,
# string-keyed votes. 2: `\boxed {x}` and multi-part final statements, final-answer statements only
# in the fallback, OlympiadBench's tolerance, votes clustered by the grader's equivalence.
GRADER_POLICY_VERSION = 2


@dataclass
class Verdict:
    extracted: str | None  # the answer we graded (box content or anchored match), None if none found
    correct: bool
    ms: float  # wall time spent on this pair (in the worker)
    error: str | None = None  # "timeout", "worker died: ...", or "<Exception>: msg"; None when fine


# --- the policy: extraction and normalization (pure functions) -------------------------------------

_SCI = re.compile(r"^([-+]?\d+(?:\.\d+)?)[eE]([-+]?\d+)$")
_PERCENT = re.compile(r"\\text\{\s*\\?%\s*\}|\\?%")


@dataclass(frozen=True)
class AnswerSpec:
    """What the grader knows of a problem beyond its gold string (from `Problem.meta`).

    multiple: the answer has several parts (OlympiadBench `is_multiple_answer`, or a gold that is a
    top-level comma list); tolerance: OlympiadBench's per-problem `error` (absolute); unit and
    answer_type: OlympiadBench's fields, carried for the record (math-verify drops unit text itself)."""

    multiple: bool = False
    tolerance: float | None = None
    unit: str | None = None
    answer_type: str | None = None

    def __post_init__(self):
        if self.tolerance is not None and not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"AnswerSpec.tolerance must be a finite number >= 0, got {self.tolerance!r}")

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None, gold: str) -> AnswerSpec:
        """The spec of a problem from its meta dict and gold; a malformed field fails naming it."""
        meta = meta or {}
        error = meta.get("error")
        try:
            tolerance = float(error) if error not in (None, "") else None
        except (TypeError, ValueError):
            raise ValueError(f"meta['error'] must be a number (OlympiadBench's tolerance), got {error!r}") from None
        flag = meta.get("is_multiple_answer")
        if flag is not None and not isinstance(flag, bool):
            raise ValueError(f"meta['is_multiple_answer'] must be true/false, got {flag!r}")
        return cls(multiple=bool(flag) or len(answer_parts(gold)) > 1, tolerance=tolerance,
                   unit=meta.get("unit") or None, answer_type=meta.get("answer_type") or None)


_OPEN, _CLOSE = "([{", ")]}"
_THOUSANDS = re.compile(r"\d,(?:\\!\s*)?\d{3}(?!\d)")


def answer_parts(answer: str) -> list[str]:
    r"""The top-level comma-separated parts of an answer: "1,-2" -> ["1", "-2"]; a tuple, interval or
    set stays one part ("(15,-29)", "(3,4]", "\{1,2\}"), and so does a thousands separator ("58,500",
    "10,\!080": a comma after a digit followed by exactly three digits)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(answer):
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0 and not _THOUSANDS.match(answer, i - 1 if i else 0):
            parts.append(answer[start:i])
            start = i + 1
    parts.append(answer[start:])
    return [p.strip() for p in parts if p.strip()]


def normalize_answer(answer: str) -> str:
    """Our fixes to math-verify's reading of an answer string (see module docstring)."""
    s = _PERCENT.sub("", answer).strip()
    # "5." -> "5" (also "5 .", "5\,." and "5..": every trailing period, so that normalizing twice changes nothing)
    s = re.sub(r"(?:(?:\s|\\[,;!]|\\quad)*\.)+$", "", s).strip()
    m = _SCI.match(s)
    if m:
        s = f"{m.group(1)}\\times10^{{{int(m.group(2))}}}"
    return s


def _mv():
    """math-verify, imported on first use with its own timeouts (and their warnings) off."""
    import math_verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return math_verify


@lru_cache(maxsize=4096)
def _parse_answer(answer: str) -> list:
    """A bare answer string (box content or gold) as math-verify objects; [] if nothing parses."""
    mv = _mv()
    return mv.parse("\\boxed{" + normalize_answer(answer) + "}",
                    extraction_config=(mv.LatexExtractionConfig(boxed_match_priority=0),),
                    parsing_timeout=None)


# boxes ---------------------------------------------------------------------------------------------

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")  # "\boxed {5}" is a box too (LaTeX ignores the space)


def find_boxes(text: str) -> list[tuple[int, int, str | None]]:
    """(start, end, content) of every top-level `\\boxed{}`/`\\fbox{}` in text order, braces balanced;
    content is None for a box never closed (end = len(text)); the boxes after it are still found (one
    stray brace must not hide the final answer). A box inside a box is part of it."""
    boxes: list[tuple[int, int, str | None]] = []
    covered = 0  # end of the last closed box: a box starting before it is nested in it
    for m in _BOX.finditer(text):
        if m.start() < covered:
            continue
        depth, end, content = 1, len(text), None
        for j in range(m.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                end, content = j + 1, text[m.end():j]
                covered = end
                break
        boxes.append((m.start(), end, content))
    return boxes


def _unwrap(content: str) -> str:
    """`\\boxed{\\boxed{5}}` -> "5": a box whose whole content is one box is that box."""
    inner = find_boxes(content)
    if len(inner) == 1 and inner[0][2] is not None and inner[0][0] == 0 and inner[0][1] == len(content.rstrip()):
        return _unwrap(inner[0][2])
    return content.strip()


# What may stand between two boxes of ONE statement ("x = \boxed{2} and y = \boxed{3}"): a short gap
# without a sentence end, a blank line or a word of self-correction.
_GAP_MAX = 60
_GAP_NOISE = re.compile(r"\$|\\[()\[\]]|\\q?quad|\\[,;:! ]")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n\s*\n")
_CORRECTION = re.compile(r"\b(?:no|not|wait|actually|rather|instead|correct\w*|but|however|mistake\w*|wrong|oops|"
                         r"sorry|hmm+|re-?check\w*|reconsider\w*|redo|let)\b", re.I)


def _same_statement(gap: str) -> bool:
    if len(gap) > _GAP_MAX:
        return False
    text = _GAP_NOISE.sub(" ", gap)
    return not (_SENTENCE_END.search(text) or _CORRECTION.search(text))


def final_statement_boxes(text: str) -> list[str]:
    """Contents of the boxes of the completion's final statement: the last box and the boxes before
    it that are joined to it by short connecting text (see `_same_statement`); [] when there is no
    box or the last box is never closed."""
    boxes = find_boxes(text)
    if not boxes or boxes[-1][2] is None:
        return []
    run = [boxes[-1]]
    for prev in reversed(boxes[:-1]):
        if prev[2] is None or not _same_statement(text[prev[1]:run[0][0]]):
            break
        run.insert(0, prev)
    return [_unwrap(c) for _, _, c in run]  # type: ignore[arg-type]


# the anchored fallback -----------------------------------------------------------------------------

# Final-answer statements, each run on its own; the rightmost statement with an answer wins.
_ANCHORS = [
    re.compile(r"final\s+answer\s*(?:\(s\))?\s*(?:is\s*:?|:|=)", re.I),  # "The final answer is", "Final answer:"
    re.compile(r"final\s+answer\s*:[^\n.]{0,80}?\b(?:is|=)", re.I),  # "Final answer: the value is 12"
    re.compile(r"final\s+answer\s+is\b[^\n.:]{0,60}:", re.I),  # "the final answer is the larger of the two: X"
    re.compile(r"(?:^|\n)[ \t*#>-]*answer\s*(?:\*\*)?\s*[:=]", re.I),  # "Answer: 17", "**Answer:** 17" (line start)
    re.compile(r"\b(?:the|our|my)\s+answer(?:\s+to\s+[^\n.$]{1,60}?)?\s+(?:is|=)\s*:?", re.I),  # "the answer is 17"
]
_SPAN_END = re.compile(r"\n|[,;!?](?=\s|$)|\.(?=\s|$)|\s+(?=[A-Za-z]{2,})")
_MATH_START = re.compile(r"(?:[A-Za-z]\w*\s*=\s*)?[-+]?[\d.\\(\[{]")


def _answer_span(rest: str) -> str | None:
    """The answer that opens `rest` (the text right after a final-answer anchor), or None."""
    rest = rest.lstrip(" \t*")
    for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(opener):
            close = rest.find(closer, len(opener))
            if close > len(opener) and "\n\n" not in rest[:close]:
                return rest[len(opener):close].strip().rstrip(".").strip() or None
            rest = rest[len(opener):] if opener == "$" else rest  # "$100" is a price, not LaTeX
            break
    if not _MATH_START.match(rest):
        return None
    end = _SPAN_END.search(rest)
    span = rest[:end.start() if end else len(rest)].strip().rstrip("*").strip()
    return span or None


def _anchored_answer(completion: str) -> str | None:
    best: tuple[int, str] | None = None
    for pattern in _ANCHORS:
        for m in pattern.finditer(completion):
            span = _answer_span(completion[m.end():])
            if span is not None and (best is None or m.end() > best[0]):
                best = (m.end(), span)
    return best[1] if best else None


def extract_answer(completion: str, fallback: Fallback = "anchored", spec: AnswerSpec | None = None) -> str | None:
    """The answer string of a completion under our extraction policy; None when it has none."""
    parts = final_statement_boxes(completion)
    if parts:
        if spec is not None and spec.multiple and len(parts) > 1:
            return ", ".join(p for p in parts if p)
        return parts[-1]
    if fallback == "none":
        return None
    if fallback == "anchored":
        return _anchored_answer(completion)
    mv = _mv()
    config = (mv.LatexExtractionConfig(), mv.ExprExtractionConfig())
    found = mv.parse(completion, extraction_config=config, fallback_mode="first_match",
                     extraction_mode="first_match", parsing_timeout=None)
    # With fallback_mode="first_match" the last item is the matched text (the LaTeX of several
    # side-by-side spans is joined by " and ", which we turn into the list it stands for).
    if not found or not isinstance(found[-1], str) or not found[-1].strip():
        return None
    return found[-1].replace(" and ", ", ").strip()


def grade_pair(completion: str, gold: str, fallback: Fallback = "anchored",
               spec: AnswerSpec | None = None) -> tuple[str | None, bool]:
    """(extracted, correct) for one pair, without any time limit: callers add one."""
    spec = spec if spec is not None else AnswerSpec.from_meta(None, gold)
    extracted = extract_answer(completion, fallback, spec)
    return extracted, _matches(extracted, gold, spec)


def _matches(extracted: str | None, gold: str, spec: AnswerSpec | None = None) -> bool:
    if not extracted:
        return False
    gold_parsed, pred_parsed = _parse_answer(gold), _parse_answer(extracted)
    if not gold_parsed or not pred_parsed:
        return False
    if _mv().verify(gold_parsed, pred_parsed, timeout_seconds=None):
        return True
    return spec is not None and spec.tolerance is not None and _within(gold_parsed[0], pred_parsed[0], spec.tolerance)


def _within(gold, pred, tolerance: float) -> bool:
    """OlympiadBench's tolerance: |gold - pred| <= error * 1.01 for plain numbers (OpenBMB/OlympiadBench,
    eval/auto_scoring_judge.py, `numerical_equal`: `abs(item - prediction) <= self.precision * 1.01`;
    we do not copy its reading of 4.2 as 0.042 or 420)."""
    import sympy

    if not (isinstance(gold, sympy.Number) and isinstance(pred, sympy.Number)):
        return False
    return abs(float(gold) - float(pred)) <= tolerance * 1.01


_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def answers_equivalent(a: str, b: str) -> bool:
    """The grader's equivalence of two extracted answers (for voting): either one, taken as the gold,
    accepts the other. Two plain decimal numbers are compared by value without math-verify (AIME's
    1,000 integer answers per problem would otherwise cost a million math-verify calls)."""
    na, nb = normalize_answer(a), normalize_answer(b)
    if _PLAIN_NUMBER.fullmatch(na) and _PLAIN_NUMBER.fullmatch(nb):
        return Decimal(na) == Decimal(nb)
    return _matches(a, b) or _matches(b, a)


@lru_cache(maxsize=1)
def _warm_up() -> None:
    """Import sympy/antlr and build math-verify's regexes outside any time limit (an import cut
    short by the timer would leave half-initialized modules behind)."""
    extract_answer("The answer is $1$.", "any")
    _parse_answer("1")


# --- time limits -----------------------------------------------------------------------------------

class _ItemTimeout(BaseException):
    """Raised by our timer; a BaseException so that math-verify's `except Exception` lets it through."""


@contextmanager
def _time_limit(seconds: float, cpu_clock: bool) -> Iterator[None]:
    """Raise _ItemTimeout after `seconds` of this process's CPU time (cpu_clock) or of wall time."""
    def _raise(signum, frame):
        raise _ItemTimeout()

    which, signum = (signal.ITIMER_PROF, signal.SIGPROF) if cpu_clock else (signal.ITIMER_REAL, signal.SIGALRM)
    old = signal.signal(signum, _raise)
    signal.setitimer(which, seconds)
    try:
        yield
    finally:
        try:
            signal.setitimer(which, 0)
        finally:
            signal.signal(signum, old)


def _grade_limited(completion: str, gold: str, spec: AnswerSpec, timeout_s: float, fallback: Fallback,
                   cpu_clock: bool) -> Verdict:
    _warm_up()
    t0 = time.perf_counter()
    extracted, correct, error = None, False, None
    try:
        with _time_limit(timeout_s, cpu_clock):
            extracted = extract_answer(completion, fallback, spec)  # kept when the comparison times out
            correct = _matches(extracted, gold, spec)
    except _ItemTimeout:
        correct, error = False, "timeout"
    except Exception as e:  # a grader bug must cost one verdict, not the run
        correct, error = False, f"{type(e).__name__}: {e}"[:250]
    return Verdict(extracted, correct, (time.perf_counter() - t0) * 1e3, error)


def _grade_batch(pairs: list[tuple[str, str, AnswerSpec]], timeout_s: float, fallback: Fallback) -> list[Verdict]:
    """Worker task: grade a batch in this worker's main thread (the worker does nothing else, so its
    CPU time is the pair's: a loaded machine slows a pair down without timing it out)."""
    return [_grade_limited(c, g, s, timeout_s, fallback, cpu_clock=True) for c, g, s in pairs]


def _vote_batch(problems: list[tuple[list[str | None], list[bool]]], timeout_s: float,
                cpu_clock: bool) -> list[list[int | None]]:
    """Worker task: vote clusters of each problem's answers under the grader's equivalence; a
    comparison that errs or outlasts `timeout_s` counts as "not equivalent"."""
    _warm_up()

    def same(a: str, b: str) -> bool:
        try:
            with _time_limit(timeout_s, cpu_clock):
                return answers_equivalent(a, b)
        except (_ItemTimeout, Exception):
            return False

    return [vote_labels(answers, ok, same) for answers, ok in problems]


def _worker_init(memory_limit_mb: int | None) -> None:
    import warnings

    warnings.simplefilter("ignore")  # sympy deprecation chatter from latex2sympy, once per worker
    if memory_limit_mb:
        import os
        import resource

        # Headroom above what the worker has mapped already: spawn re-imports the parent's main
        # module, and a CUDA build of torch alone reserves tens of GiB of address space.
        mapped = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = mapped + memory_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    _warm_up()  # before the first task's clock starts


# --- the grader ------------------------------------------------------------------------------------

Pair = Union[tuple[str, str], tuple[str, str, Union[Mapping[str, Any], AnswerSpec, None]]]


def _with_spec(item: Pair) -> tuple[str, str, AnswerSpec]:
    """(completion, gold, spec): the spec from the problem's meta (or given), built here so that only
    its four fields travel to a worker."""
    if len(item) not in (2, 3):
        raise ValueError(f"grade() items are (completion, gold) or (completion, gold, meta), got {len(item)} fields")
    completion, gold = str(item[0]), str(item[1])
    meta = item[2] if len(item) == 3 else None
    return completion, gold, meta if isinstance(meta, AnswerSpec) else AnswerSpec.from_meta(meta, gold)


class Grader:
    """Grades (completion, gold) pairs in a pool of worker processes; see the module docstring.

    grader = Grader(workers=2, timeout_s=5.0)
    verdicts = grader.grade([(completion, gold), ...])     # input order
    future = grader.grade_async(pairs)                      # overlap with the next generation batch
    grader.close()                                          # or: with Grader() as grader: ...
    """

    takes_meta = True  # grade() items may be (completion, gold, problem meta): see AnswerSpec

    def __init__(self, workers: int = 2, timeout_s: float = 5.0, batch_size: int = 16,
                 fallback: Fallback = "anchored", hard_grace_s: float = 10.0,
                 memory_limit_mb: int | None = 4096, start_method: str = "spawn"):
        if workers < 0 or timeout_s <= 0 or batch_size < 1:
            raise ValueError("need workers >= 0, timeout_s > 0, batch_size >= 1")
        if fallback not in ("anchored", "any", "none"):
            raise ValueError(f"fallback must be 'anchored', 'any' or 'none', got {fallback!r}")
        self.workers, self.timeout_s, self.batch_size = workers, timeout_s, batch_size
        self.fallback, self.hard_grace_s = fallback, hard_grace_s
        self.memory_limit_mb, self.start_method = memory_limit_mb, start_method
        self._pool = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def settings(self) -> dict:
        """Everything that decides a verdict; stored with every evaluation."""
        return {
            "grader": GRADER_NAME,
            "policy_version": GRADER_POLICY_VERSION,
            "math_verify": version("math-verify"),
            "latex2sympy2_extended": version("latex2sympy2_extended"),
            "extraction": "final statement's boxes (several only for multi-part problems); else " + {
                "anchored": "final-answer statements only", "any": "math-verify default (unanchored)",
                "none": "nothing"}[self.fallback],
            "fallback": self.fallback,
            "normalization": ["drop trailing period", "drop percent sign", "scientific notation"],
            "comparison": "math_verify.verify(gold, pred, float_rounding=6, strict=True); "
                          "meta error: |gold - pred| <= 1.01 error",
            "maj_votes": "clusters: correct samples; incorrect by answers_equivalent, first-leader",
            "timeout_s": self.timeout_s,
            "timeout_clock": "wall (in-process)" if self.workers == 0 else "worker CPU time",
            "hard_grace_s": self.hard_grace_s,
            "workers": self.workers,
            "batch_size": self.batch_size,
            "memory_limit_mb": self.memory_limit_mb,
        }

    # in-process ------------------------------------------------------------------------------------
    def _grade_here(self, pairs: Sequence[tuple[str, str, AnswerSpec]]) -> list[Verdict]:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("Grader(workers=0) needs the main thread (its time limit is a signal "
                               "timer); use workers >= 1 off the main thread")
        # wall clock here: the process's CPU time also counts other threads (a vLLM engine, torch)
        return [_grade_limited(c, g, s, self.timeout_s, self.fallback, cpu_clock=False) for c, g, s in pairs]

    # pool ------------------------------------------------------------------------------------------
    def _ensure_pool(self):
        with self._lock:
            if self._pool is None:
                import multiprocessing

                from pebble import ProcessPool

                self._pool = ProcessPool(max_workers=self.workers, initializer=_worker_init,
                                         initargs=(self.memory_limit_mb,),
                                         context=multiprocessing.get_context(self.start_method))
            return self._pool

    def _schedule(self, pairs: list):
        timeout = self.timeout_s * len(pairs) + self.hard_grace_s
        return self._ensure_pool().schedule(_grade_batch, args=(pairs, self.timeout_s, self.fallback),
                                            timeout=timeout)

    def _grade_pool(self, pairs: list[tuple[str, str, AnswerSpec]]) -> list[Verdict]:
        # Small jobs are split so that every worker gets a share.
        size = max(1, min(self.batch_size, math.ceil(len(pairs) / self.workers)))
        chunks = [list(range(i, min(i + size, len(pairs)))) for i in range(0, len(pairs), size)]
        results: list[Verdict | None] = [None] * len(pairs)
        for attempt in (0, 1):  # attempt 1: pairs of dead batches, one pair per task
            started = [(idx, time.perf_counter(), self._schedule([pairs[i] for i in idx])) for idx in chunks]
            retry: list[int] = []
            for idx, t0, future in started:
                try:
                    for i, verdict in zip(idx, future.result()):
                        results[i] = verdict
                except Exception as e:  # hard timeout (worker killed) or a worker that died
                    if attempt == 0 and len(idx) > 1:
                        retry.extend(idx)
                        continue
                    error = "timeout" if isinstance(e, FutureTimeout) else f"worker died: {type(e).__name__}: {e}"
                    for i in idx:  # ms: from scheduling, so it includes any wait in the queue
                        box = final_statement_boxes(pairs[i][0])
                        results[i] = Verdict(box[-1] if box else None, False,
                                             (time.perf_counter() - t0) * 1e3, error[:250])
            chunks = [[i] for i in retry]
            if not chunks:
                break
        return results  # type: ignore[return-value]

    def vote_labels(self, problems: Sequence[tuple[Sequence[str | None], Sequence[bool]]]) -> list[list[int | None]]:
        """maj@k clusters per problem from (extracted answers, verdicts), the grader's equivalence
        deciding (see harness.metrics); a batch whose worker dies falls back to answer keys."""
        items = [([None if a is None else str(a) for a in answers], [bool(x) for x in ok]) for answers, ok in problems]
        if self.workers == 0:
            if threading.current_thread() is not threading.main_thread():
                raise RuntimeError("Grader(workers=0) needs the main thread (its time limit is a signal timer)")
            return _vote_batch(items, self.timeout_s, cpu_clock=False)
        size = max(1, min(self.batch_size, math.ceil(len(items) / self.workers)))
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        pool = self._ensure_pool()
        futures = [pool.schedule(_vote_batch, args=(chunk, self.timeout_s, True),
                                 timeout=self.timeout_s * sum(len(a) ** 2 for a, _ in chunk) + self.hard_grace_s)
                   for chunk in chunks]
        out: list[list[int | None]] = []
        for chunk, future in zip(chunks, futures):
            try:
                out.extend(future.result())
            except Exception:  # killed at the hard limit or died: string keys for these problems
                out.extend(vote_labels(a, ok) for a, ok in chunk)
        return out

    # public ----------------------------------------------------------------------------------------
    def grade(self, pairs: Sequence[Pair]) -> list[Verdict]:
        """One Verdict per (completion, gold) or (completion, gold, problem meta) item, in input order."""
        pairs = [_with_spec(p) for p in pairs]
        if not pairs:
            return []
        return self._grade_here(pairs) if self.workers == 0 else self._grade_pool(pairs)

    def grade_async(self, pairs: Sequence[Pair]) -> Future:
        """`grade` in the background: a Future of the verdict list (workers=0: already done)."""
        if self.workers == 0:
            future: Future = Future()
            try:
                future.set_result(self.grade(pairs))
            except Exception as e:
                future.set_exception(e)
            return future
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grader")
        return self._executor.submit(self.grade, list(pairs))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def grader_scope(grader: Grader | None = None) -> AbstractContextManager[Grader]:
    """`with grader_scope(g) as g:` the caller's grader, left open, or a new one closed after the block."""
    return nullcontext(grader) if grader is not None else Grader()


def is_correct(completion: str, gold: str, timeout_s: float = 5.0) -> bool:
    """One-off check: in-process on the main thread, else in a short-lived worker process."""
    workers = 0 if threading.current_thread() is threading.main_thread() else 1
    with Grader(workers=workers, timeout_s=timeout_s) as grader:
        return grader.grade([(completion, gold)])[0].correct
