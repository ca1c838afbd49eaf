"""Evaluate a model on a benchmark: resumable, streaming, reusing; every sample lands in results.db.

    evaluate(factory, run_id, benchmark, problems, protocol, generator, grader) -> {"evaluation_id", "metrics", "reused"}
    evaluate_many(factory, run_id, {benchmark: problems}, ...)  several benchmarks, batches shared between them
    evaluate_model(factory, run_id, model, benchmarks, data_dir=..., protocol=..., make_generator=..., grader=...)

Identity: an evaluation is (run, benchmark, eval_hash) where eval_hash covers the problems (ids and
gold answers), the template, the sampling (n, temperature, top_p, max_tokens, seed, stop) and the
grader's settings. A finished evaluation with the same identity is returned as is ("reused").

Resume: every problem has its own seed `stable_seed(protocol.seed, benchmark, problem.id)`, so its
samples do not depend on batching. Problems whose n samples are all stored are skipped; a partial
problem is regenerated with its seed and only its missing sample indices are inserted (the unique
constraint on (evaluation, problem, sample_index) is the backstop against duplicates).

Streaming: problems go through in batches (of several benchmarks when they share a sampling); a
batch's samples are graded and written in one transaction on a background thread while the next
batch generates, so grading overlaps generation and memory holds at most two batches. Prompts longer than the model's context are stored as
incorrect samples with finish_reason "prompt_too_long" instead of failing the whole batch.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from benchmarks import Problem, load_benchmark

from .generation import Completion, Generator, Sampling, stable_seed
from .prompts import get_template, stop_sequences
from .protocol import EvalProtocol
from .store import Evaluation, Sample, config_hash, session_scope, utcnow

TOO_LONG = "prompt_too_long"
RUNTIME_GRADER_KEYS = frozenset({"workers", "batch_size", "memory_limit_mb", "hard_grace_s"})


def eval_identity(benchmark: str, problems: Sequence[Problem], protocol: EvalProtocol,
                  grader_settings: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(sampling dict, eval_hash) of evaluating `problems` of `benchmark` under `protocol`."""
    sampling = sampling_for(benchmark, protocol)
    spec = {
        "benchmark": benchmark,
        # answers too: a corrected gold answer must not reuse stale verdicts
        "problems": config_hash([[p.id, p.answer] for p in problems]),
        "template": protocol.template,
        "sampling": _sampling_dict(sampling),
        # how the grader runs (workers, chunking) does not change a verdict: not part of the identity
        "grader": {k: v for k, v in grader_settings.items() if k not in RUNTIME_GRADER_KEYS},
    }
    return _sampling_dict(sampling), config_hash(spec)


def sampling_for(benchmark: str, protocol: EvalProtocol) -> Sampling:
    return Sampling(n=protocol.n_for(benchmark), temperature=protocol.temperature, top_p=protocol.top_p,
                    max_tokens=protocol.max_tokens, seed=protocol.seed, stop=stop_sequences(protocol.template))


def _sampling_dict(s: Sampling) -> dict[str, Any]:
    return {"n": s.n, "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens,
            "seed": s.seed, "stop": list(s.stop)}


@dataclass
class _Job:
    """One evaluation being filled: its row, its sampling, what is stored, what is missing."""

    benchmark: str
    eval_id: int
    sampling: Sampling
    stored: dict[str, set[int]]
    todo: list[Problem]
    task: Any = None  # its progress-bar task


def evaluate(factory: sessionmaker[Session], run_id: int, benchmark: str, problems: Sequence[Problem],
             protocol: EvalProtocol, generator: Generator | Callable[[], Generator], grader, *,
             batch_size: int = 64, progress: bool | Progress = True) -> dict[str, Any]:
    """Evaluate `problems` (resuming or reusing); returns {"evaluation_id", "metrics", "reused"}.

    `generator` may be a zero-argument callable that builds one: it is called only if samples are
    missing, so reusing a finished evaluation starts no engine."""
    return evaluate_many(factory, run_id, {benchmark: problems}, protocol, generator, grader,
                         batch_size=batch_size, progress=progress)[benchmark]


def evaluate_many(factory: sessionmaker[Session], run_id: int, problem_sets: dict[str, Sequence[Problem]],
                  protocol: EvalProtocol, generator: Generator | Callable[[], Generator], grader, *,
                  batch_size: int = 64, progress: bool | Progress = True) -> dict[str, dict[str, Any]]:
    """`evaluate` for several benchmarks as one stream: {benchmark: result}.

    Batches span benchmarks that share a sampling, so small benchmarks (AIME, AMC) fill one engine
    call together instead of five half-empty ones, and grading the last batch of one benchmark
    overlaps generating the next. Each benchmark is still its own evaluation row."""
    t0 = time.perf_counter()
    template = get_template(protocol.template)
    settings = grader.settings()
    results: dict[str, dict[str, Any]] = {}
    jobs: list[_Job] = []
    for benchmark, problems in problem_sets.items():
        opened = _open(factory, run_id, benchmark, problems, protocol, template.name, settings)
        if isinstance(opened, dict):
            results[benchmark] = opened
        else:
            jobs.append(opened)
    timing = {"generate_s": 0.0, "grade_store_s": 0.0, "wait_for_grading_s": 0.0}
    if any(j.todo for j in jobs):
        gen = generator if hasattr(generator, "generate") else generator()
        _run_batches(factory, jobs, template, protocol, gen, grader, batch_size, progress, timing)
    for job in jobs:
        metrics = _summarize(factory, job.eval_id, protocol, job.sampling.n)
        metrics["timing"] = {k: round(v, 4) for k, v in timing.items()} | {"benchmarks_in_call": len(jobs)}
        with session_scope(factory) as s:
            ev = s.get(Evaluation, job.eval_id)
            ev.metrics, ev.status, ev.finished_at = metrics, "finished", utcnow()
            ev.wall_s = time.perf_counter() - t0  # batches are shared: the wall time of the whole call
        results[job.benchmark] = {"evaluation_id": job.eval_id, "metrics": metrics, "reused": False}
    return {b: results[b] for b in problem_sets}


def _open(factory, run_id, benchmark, problems, protocol, template_name, settings) -> _Job | dict[str, Any]:
    """The finished evaluation's result (reuse), or a job for a new or interrupted one."""
    sampling_json, eval_hash = eval_identity(benchmark, problems, protocol, settings)
    sampling = sampling_for(benchmark, protocol)
    with session_scope(factory) as s:
        ev = s.scalars(select(Evaluation).where(Evaluation.run_id == run_id, Evaluation.benchmark == benchmark,
                                                Evaluation.eval_hash == eval_hash)).first()
        if ev is not None and ev.status == "finished":
            return {"evaluation_id": ev.id, "metrics": ev.metrics, "reused": True}
        if ev is None:
            ev = Evaluation(run_id=run_id, benchmark=benchmark, template=template_name, sampling=sampling_json,
                            grader=settings, eval_hash=eval_hash, n_problems=len(problems))
            s.add(ev)
        ev.status, ev.started_at = "running", utcnow()
        s.flush()
        stored: dict[str, set[int]] = {}
        for pid, idx in s.execute(select(Sample.problem_id, Sample.sample_index).where(Sample.evaluation_id == ev.id)):
            stored.setdefault(pid, set()).add(idx)
    todo = [p for p in problems if len(stored.get(p.id, ())) < sampling.n]
    return _Job(benchmark, ev.id, sampling, stored, todo)


def _batches(jobs: list[_Job], batch_size: int) -> list[list[tuple[_Job, Problem]]]:
    """Consecutive (job, problem) items, at most `batch_size` per batch, one sampling per batch."""
    groups: dict[Sampling, list[tuple[_Job, Problem]]] = {}
    for job in jobs:
        groups.setdefault(job.sampling, []).extend((job, p) for p in job.todo)
    return [items[i:i + batch_size] for items in groups.values() for i in range(0, len(items), batch_size)]


def _run_batches(factory, jobs, template, protocol, gen, grader, batch_size, progress, timing) -> None:
    tokenizer = getattr(gen, "tokenizer", None)
    limit = context_limit(gen)
    bar, own_bar = _progress(progress)
    for job in jobs:
        if job.todo:
            job.task = bar.add_task(f"{job.benchmark} (n={job.sampling.n})",
                                    total=sum(job.sampling.n - len(job.stored.get(p.id, ())) for p in job.todo))
    pool = ThreadPoolExecutor(1, thread_name_prefix="grade")  # one writer: batches land in order
    pending: Future | None = None
    lock = threading.Lock()
    try:
        for batch in _batches(jobs, batch_size):
            sampling = batch[0][0].sampling
            prompts = [template.render(p.problem, tokenizer) for _, p in batch]
            n_tokens = [_count_tokens(tokenizer, text) for text in prompts]
            fits = [i for i, k in enumerate(n_tokens) if limit is None or k is None or k < limit]
            t = time.perf_counter()
            outs = gen.generate([prompts[i] for i in fits], sampling,
                                seeds=[stable_seed(protocol.seed, batch[i][0].benchmark, batch[i][1].id) for i in fits])
            timing["generate_s"] += time.perf_counter() - t
            completions: list[list[Completion]] = [[] for _ in batch]
            for i, out in zip(fits, outs):
                completions[i] = out
            for i in set(range(len(batch))) - set(fits):
                completions[i] = [Completion("", [], TOO_LONG, n_tokens[i] or 0)] * sampling.n
            t = time.perf_counter()
            if pending is not None:
                pending.result()  # surfaces a grading/storage error of the previous batch
            timing["wait_for_grading_s"] += time.perf_counter() - t
            pending = pool.submit(_grade_and_store, factory, batch, prompts, completions, grader, timing, lock, bar)
        if pending is not None:
            t = time.perf_counter()
            pending.result()
            timing["wait_for_grading_s"] += time.perf_counter() - t
    finally:
        pool.shutdown(wait=True)  # a failing batch still lets the batch in flight be written
        if own_bar:
            bar.stop()


def _grade_and_store(factory, batch, prompts, completions, grader, timing, lock, bar) -> None:
    t = time.perf_counter()
    rows = []  # (job, problem, prompt, sample_index, completion)
    for (job, p), prompt, outs in zip(batch, prompts, completions):
        have = job.stored.get(p.id, set())
        rows += [(job, p, prompt, j, c) for j, c in enumerate(outs) if j not in have]
    graded = [i for i, r in enumerate(rows) if r[4].finish_reason != TOO_LONG]
    verdicts = dict(zip(graded, _grade(grader, [(rows[i][4].text, rows[i][1].answer) for i in graded])))
    samples = []
    for i, (job, p, prompt, j, c) in enumerate(rows):
        v = verdicts.get(i)
        samples.append(Sample(
            evaluation_id=job.eval_id, problem_id=p.id, sample_index=j, prompt=prompt, completion=c.text,
            gold=p.answer, prompt_tokens=c.prompt_tokens, completion_tokens=len(c.token_ids),
            finish_reason=c.finish_reason, extracted=v.extracted if v else None,
            correct=bool(v.correct) if v else False, grading_ms=float(v.ms) if v else 0.0,
            grading_error=(v.error[:256] if v.error else None) if v else "prompt exceeds the model's context",
        ))
    try:
        with session_scope(factory) as s:
            s.add_all(samples)
    except IntegrityError:  # another process wrote some of these meanwhile: insert the rest one by one
        for row in samples:
            try:
                with session_scope(factory) as s:
                    s.add(row)
            except IntegrityError:
                pass
    for job, p, _, j, _ in rows:
        job.stored.setdefault(p.id, set()).add(j)
        bar.advance(job.task, 1)
    with lock:
        timing["grade_store_s"] += time.perf_counter() - t


def _grade(grader, pairs):
    if not pairs:
        return []
    if hasattr(grader, "grade_async"):
        return grader.grade_async(pairs).result()
    return grader.grade(pairs)


def _summarize(factory, eval_id: int, protocol: EvalProtocol, n: int) -> dict[str, Any]:
    from .metrics import summarize

    with session_scope(factory) as s:
        rows = s.execute(select(Sample.problem_id, Sample.sample_index, Sample.correct, Sample.extracted,
                                Sample.completion_tokens, Sample.finish_reason)
                         .where(Sample.evaluation_id == eval_id).order_by(Sample.problem_id, Sample.sample_index)).all()
    return summarize([r._asdict() for r in rows], ks=tuple(k for k in protocol.pass_k if k <= n))


def context_limit(gen) -> int | None:
    """Longest sequence the generator's model accepts (vLLM's max_model_len, else the HF config)."""
    llm = getattr(gen, "llm", None)
    if llm is not None:
        try:
            return int(llm.llm_engine.model_config.max_model_len)
        except AttributeError:
            return None
    if getattr(gen, "max_model_len", None) is not None:  # HFGenerator enforces its own (vLLM's rule)
        return int(gen.max_model_len)
    config = getattr(getattr(gen, "model", None), "config", None)
    return getattr(config, "max_position_embeddings", None)


def _count_tokens(tokenizer, text: str) -> int | None:
    if tokenizer is None:
        return None
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def _progress(progress: bool | Progress) -> tuple[Progress, bool]:
    """(bar, started here): a caller's bar is shared, else a new one (disabled when progress=False)."""
    if isinstance(progress, Progress):
        return progress, False
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), disable=not progress)
    bar.start()
    return bar, True


def evaluate_model(factory: sessionmaker[Session], run_id: int, model: str, benchmarks: Sequence[str], *,
                   data_dir: str | None = None, protocol: EvalProtocol,
                   make_generator: Callable[[str], Generator], grader, limit: int | None = None,
                   batch_size: int = 64, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Evaluate `model` on each benchmark; {benchmark: metrics}. The engine starts only if needed."""
    problem_sets = {b: load_benchmark(b, data_dir, limit) for b in benchmarks}  # bad names fail before any work
    built: list[Generator] = []

    def lazy() -> Generator:
        if not built:
            built.append(make_generator(model))
        return built[0]

    try:
        out = evaluate_many(factory, run_id, problem_sets, protocol, lazy, grader, batch_size=batch_size,
                            progress=progress)
    finally:
        for g in built:
            g.close()
    return {b: r["metrics"] for b, r in out.items()}
