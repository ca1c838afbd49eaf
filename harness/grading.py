r"""Grading: does a completion's final answer equal the gold answer? Built on math-verify.

Extraction policy (what "the answer" of a completion is)
--------------------------------------------------------
1. The content of the LAST `\boxed{...}` (or `\fbox{...}`), braces balanced (`benchmarks.last_boxed`).
   Earlier boxes are ignored, also when several boxes sit side by side: math-verify's default merges
   `\boxed{1}, \boxed{2}` into the set {1, 2}; we read it as the answer `2`. One answer, one box.
2. Only when there is no box (or the last `\boxed{` is never closed, e.g. a truncated generation):
   math-verify's own extraction restricted to ANCHORED answers (`fallback="anchored"`, the default;
   `try_extract_without_anchor=False` for its LaTeX and plain-expression targets). It accepts
     - "final answer is X" and "final answer <up to 100 chars> is X",
     - "answer" (any case) followed within 50 characters by X, or by "= X" within 100 characters,
   where X is a LaTeX span ($...$, $$...$$, \(...\), \[...\], a bare \frac{a}{b}) or a plain number or
   arithmetic expression ("1,234", "3/4", "-2.5", "$100", "40%"). Within the highest-priority pattern
   that matches, the rightmost match wins (`extraction_mode="first_match"`). It never accepts a bare
   number somewhere in the text: math-verify's default "last number" fallback would credit a
   rambling completion that happens to end in the right integer, and that inflates pass@k at large k
   (a random AIME integer hits often enough in 1,000 samples). `fallback="any"` restores
   math-verify's unanchored patterns (its default); `fallback="none"` accepts boxed answers only.
3. Otherwise the completion has no answer: extracted=None, correct=False (error stays None).

Normalization, applied to the extracted answer and to the gold alike, where math-verify's default is
wrong for us (each case is a test in tests/test_grading.py):
  - a trailing period is dropped: `\boxed{5.}` == 5 (math-verify fails to parse "5." and falls back
    to comparing the strings "5." and "5");
  - percent signs are dropped, never read as /100: `50\%` == `50`, but `50\%` != `0.5` and `0.5` !=
    `50\%` (MATH writes percent answers with and without `\%`; math-verify accepts all three as equal,
    crediting 0.5 as the answer to "what percent ...?");
  - plain scientific notation (`3e5`, `1.2E-3`, the whole answer) becomes `3\times10^{5}`:
    math-verify reads `3e5` as 3*e*5 with Euler's e.
Both sides are then parsed as `\boxed{<answer>}` by math-verify (LaTeX target, boxed first) and
compared with `math_verify.verify(gold, pred)` (float_rounding=6, strict=True), in that order:
verify is not symmetric (an assignment `x=5` in the prediction matches the gold `5`).

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
(`memory_limit_mb` above what a worker maps at start) so that a runaway answer fails with MemoryError instead of swapping the machine.
`workers=0` grades in the calling thread, which must be the main thread (the timer needs it), with a
wall-clock limit (process CPU time would count every other thread) and no hard limit.
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
from functools import lru_cache
from importlib.metadata import version
from typing import Iterator, Literal, Sequence

from benchmarks import last_boxed

Fallback = Literal["anchored", "any", "none"]
GRADER_NAME = "math-verify/last-boxed"
GRADER_POLICY_VERSION = 1  # bump whenever a verdict can change (evaluation identities include it)


@dataclass
class Verdict:
    extracted: str | None  # the answer we graded (box content or anchored match), None if none found
    correct: bool
    ms: float  # wall time spent on this pair (in the worker)
    error: str | None = None  # "timeout", "worker died: ...", or "<Exception>: msg"; None when fine


# --- the policy: extraction and normalization (pure functions) -------------------------------------

_SCI = re.compile(r"^([-+]?\d+(?:\.\d+)?)[eE]([-+]?\d+)$")
_PERCENT = re.compile(r"\\text\{\s*\\?%\s*\}|\\?%")


def normalize_answer(answer: str) -> str:
    """Our fixes to math-verify's reading of an answer string (see module docstring)."""
    s = _PERCENT.sub("", answer).strip()
    s = re.sub(r"(?:\s|\\[,;!]|\\quad)*\.$", "", s).strip()  # "5." -> "5" (also "5 ." and "5\,.")
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


def extract_answer(completion: str, fallback: Fallback = "anchored") -> str | None:
    """The answer string of a completion under our extraction policy; None when it has none."""
    box = last_boxed(completion)
    if box is not None:
        return box.strip()
    if fallback == "none":
        return None
    mv = _mv()
    anchored = fallback == "anchored"
    config = (mv.LatexExtractionConfig(try_extract_without_anchor=not anchored),
              mv.ExprExtractionConfig(try_extract_without_anchor=not anchored))
    found = mv.parse(completion, extraction_config=config, fallback_mode="first_match",
                     extraction_mode="first_match", parsing_timeout=None)
    # With fallback_mode="first_match" the last item is the matched text (the LaTeX of several
    # side-by-side spans is joined by " and ", which we turn into the list it stands for).
    if not found or not isinstance(found[-1], str) or not found[-1].strip():
        return None
    return found[-1].replace(" and ", ", ").strip()


def grade_pair(completion: str, gold: str, fallback: Fallback = "anchored") -> tuple[str | None, bool]:
    """(extracted, correct) for one pair, without any time limit: callers add one."""
    extracted = extract_answer(completion, fallback)
    return extracted, _matches(extracted, gold)


def _matches(extracted: str | None, gold: str) -> bool:
    if not extracted:
        return False
    gold_parsed, pred_parsed = _parse_answer(gold), _parse_answer(extracted)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(_mv().verify(gold_parsed, pred_parsed, timeout_seconds=None))


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


def _grade_limited(completion: str, gold: str, timeout_s: float, fallback: Fallback,
                   cpu_clock: bool) -> Verdict:
    _warm_up()
    t0 = time.perf_counter()
    extracted, correct, error = None, False, None
    try:
        with _time_limit(timeout_s, cpu_clock):
            extracted = extract_answer(completion, fallback)  # kept when the comparison times out
            correct = _matches(extracted, gold)
    except _ItemTimeout:
        correct, error = False, "timeout"
    except Exception as e:  # a grader bug must cost one verdict, not the run
        correct, error = False, f"{type(e).__name__}: {e}"[:250]
    return Verdict(extracted, correct, (time.perf_counter() - t0) * 1e3, error)


def _grade_batch(pairs: list[tuple[str, str]], timeout_s: float, fallback: Fallback) -> list[Verdict]:
    """Worker task: grade a batch in this worker's main thread (the worker does nothing else, so its
    CPU time is the pair's: a loaded machine slows a pair down without timing it out)."""
    return [_grade_limited(c, g, timeout_s, fallback, cpu_clock=True) for c, g in pairs]


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

class Grader:
    """Grades (completion, gold) pairs in a pool of worker processes; see the module docstring.

    grader = Grader(workers=2, timeout_s=5.0)
    verdicts = grader.grade([(completion, gold), ...])     # input order
    future = grader.grade_async(pairs)                      # overlap with the next generation batch
    grader.close()                                          # or: with Grader() as grader: ...
    """

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
            "math_verify": version("math-verify"),
            "latex2sympy2_extended": version("latex2sympy2_extended"),
            "extraction": "last \\boxed{}; else math-verify " + {
                "anchored": "anchored answers only", "any": "default (unanchored)", "none": "nothing"}[self.fallback],
            "fallback": self.fallback,
            "normalization": ["drop trailing period", "drop percent sign", "scientific notation"],
            "comparison": "math_verify.verify(gold, pred, float_rounding=6, strict=True)",
            "timeout_s": self.timeout_s,
            "timeout_clock": "wall (in-process)" if self.workers == 0 else "worker CPU time",
            "hard_grace_s": self.hard_grace_s,
            "workers": self.workers,
            "batch_size": self.batch_size,
            "memory_limit_mb": self.memory_limit_mb,
        }

    # in-process ------------------------------------------------------------------------------------
    def _grade_here(self, pairs: Sequence[tuple[str, str]]) -> list[Verdict]:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("Grader(workers=0) needs the main thread (its time limit is a signal "
                               "timer); use workers >= 1 off the main thread")
        # wall clock here: the process's CPU time also counts other threads (a vLLM engine, torch)
        return [_grade_limited(c, g, self.timeout_s, self.fallback, cpu_clock=False) for c, g in pairs]

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

    def _schedule(self, pairs: list[tuple[str, str]]):
        timeout = self.timeout_s * len(pairs) + self.hard_grace_s
        return self._ensure_pool().schedule(_grade_batch, args=(pairs, self.timeout_s, self.fallback),
                                            timeout=timeout)

    def _grade_pool(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
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
                        box = last_boxed(pairs[i][0])
                        results[i] = Verdict(box.strip() if box is not None else None, False,
                                             (time.perf_counter() - t0) * 1e3, error[:250])
            chunks = [[i] for i in retry]
            if not chunks:
                break
        return results  # type: ignore[return-value]

    # public ----------------------------------------------------------------------------------------
    def grade(self, pairs: Sequence[tuple[str, str]]) -> list[Verdict]:
        """One Verdict per (completion, gold) pair, in input order."""
        pairs = [(str(c), str(g)) for c, g in pairs]
        if not pairs:
            return []
        return self._grade_here(pairs) if self.workers == 0 else self._grade_pool(pairs)

    def grade_async(self, pairs: Sequence[tuple[str, str]]) -> Future:
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
