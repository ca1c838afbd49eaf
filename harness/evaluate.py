"""Evaluate a model on a benchmark: resumable, streaming, reusing; every sample lands in results.db.

    evaluate(factory, run_id, benchmark, problems, protocol, generator, grader) -> {"evaluation_id", "metrics", ...}
    evaluate_many(factory, run_id, {benchmark: problems}, ...)  several benchmarks, requests shared between them
    evaluate_model(factory, run_id, model, benchmarks, data_dir=..., protocol=..., make_generator=..., grader=...)

Identity: an evaluation is (run, benchmark, eval_hash); eval_hash is the hash of its `identity`
(stored visibly in evaluations.identity): the problem set's content (ids, problem texts, gold
answers) and the limit it was loaded with, the template's full text (not just its name), the
sampling (n, temperature, top_p, max_tokens, seed, stop), the engine (backend, dtype,
max_model_len, tensor/data parallel sizes, vLLM/torch/transformers versions, the model's revision:
a content hash of a local directory or a hub commit; `harness.identity`), and the grader (its
GRADER_POLICY_VERSION and every setting that decides a verdict; how many workers grade does not).
A finished evaluation with the same identity is returned as is ("reused"); an interrupted one is
resumed only under the same identity, so a resume can never mix samples of two backends, and a
different context length never reuses "prompt too long" zeros.

Resume: every problem has its own seed `stable_seed(protocol.seed, benchmark, problem.id)`, so its
samples do not depend on batching. Problems whose n samples are all stored are skipped; a partial
problem is regenerated with its seed and only its missing sample indices are inserted (the unique
constraint on (evaluation, problem, sample_index) is the backstop against duplicates).

Throughput: by default all missing problems of one sampling (across benchmarks) go to the engine
in ONE call, because vLLM's throughput falls with smaller calls (measured: batches of 64 problems
cost 1.44x one call); `batch_size` caps a call when a crash should lose less work. Results are
graded and written in chunks on a background thread, one transaction each. Prompts longer than the
model's context are stored as incorrect samples with finish_reason "prompt_too_long" and counted
in the metrics (`prompt_too_long`, and in `truncation_rate`), instead of failing the whole call.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from benchmarks import Problem, load_benchmark

from .generation import Completion, Generator, Sampling, encode_prompt, stable_seed
from .grading import GRADER_POLICY_VERSION
from .prompts import get_template, stop_sequences
from .protocol import EvalProtocol
from .store import Evaluation, Sample, config_hash, session_scope, utcnow

TOO_LONG = "prompt_too_long"
# how the grader runs (processes, chunking, memory cap, which clock times a pair) does not change a verdict
RUNTIME_GRADER_KEYS = frozenset({"workers", "batch_size", "memory_limit_mb", "hard_grace_s", "timeout_clock"})
UNKNOWN_ENGINE = {"backend": "unspecified"}  # a generator that cannot say what it is (test stubs)
STORE_CHUNK = 256  # samples graded and written per background task


def problem_set_identity(problems: Sequence[Problem], limit: int | None) -> dict[str, Any]:
    """Content hash of the problems (a corrected gold answer or problem text is a new problem set)."""
    return {"n": len(problems), "limit": limit,
            "hash": config_hash([[p.id, p.problem, p.answer] for p in problems])}


def template_identity(name: str) -> dict[str, Any]:
    """Every field of the template (its literal text, system/user messages, stops, chat mode)."""
    return to_plain(asdict(get_template(name)))


def grader_identity(settings: dict[str, Any]) -> dict[str, Any]:
    """The grader's policy version and the settings that decide verdicts (not how many workers run)."""
    return {"policy_version": GRADER_POLICY_VERSION,
            **{k: v for k, v in settings.items() if k not in RUNTIME_GRADER_KEYS}}


def to_plain(obj: Any) -> Any:
    return [to_plain(v) for v in obj] if isinstance(obj, (list, tuple)) else (
        {k: to_plain(v) for k, v in obj.items()} if isinstance(obj, dict) else obj)


def identity_hash(identity: dict[str, Any]) -> str:
    """eval_hash of an identity; a local model counts by its content, not by the path it sits at."""
    engine = dict(identity.get("engine") or {})
    model = engine.get("model")
    if isinstance(model, dict) and model.get("kind") == "local":
        engine["model"] = {k: v for k, v in model.items() if k != "ref"}
    return config_hash({**identity, "engine": engine})


def eval_identity(benchmark: str, problems: Sequence[Problem], protocol: EvalProtocol,
                  grader_settings: dict[str, Any], engine: dict[str, Any] | None = None,
                  limit: int | None = None) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(sampling dict, eval_hash, identity) of evaluating `problems` of `benchmark` under `protocol`."""
    sampling = _sampling_dict(sampling_for(benchmark, protocol))
    identity = {
        "benchmark": benchmark,
        "problem_set": problem_set_identity(problems, limit),
        "template": template_identity(protocol.template),
        "sampling": sampling,
        "engine": engine or UNKNOWN_ENGINE,
        "grader": grader_identity(grader_settings),
    }
    return sampling, identity_hash(identity), identity


def sampling_for(benchmark: str, protocol: EvalProtocol) -> Sampling:
    return Sampling(n=protocol.n_for(benchmark), temperature=protocol.temperature, top_p=protocol.top_p,
                    max_tokens=protocol.max_tokens, seed=protocol.seed, stop=stop_sequences(protocol.template),
                    include_stop=get_template(protocol.template).include_stop)


def _sampling_dict(s: Sampling) -> dict[str, Any]:
    return {"n": s.n, "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens,
            "seed": s.seed, "stop": list(s.stop), **({"include_stop": True} if s.include_stop else {})}


def engine_of(generator: Any, model: str | None = None) -> dict[str, Any]:
    """The engine identity of a generator, or of what a generator factory would build for `model`."""
    ident = getattr(generator, "identity", None)
    if not callable(ident):
        return dict(UNKNOWN_ENGINE)
    if hasattr(generator, "generate"):
        return ident()
    return ident(model) if model is not None else dict(UNKNOWN_ENGINE)


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
             batch_size: int | None = None, progress: bool | Progress = True, engine: dict[str, Any] | None = None,
             limit: int | None = None) -> dict[str, Any]:
    """Evaluate `problems` (resuming or reusing); returns {"evaluation_id", "metrics", "reused"}.

    `generator` may be a zero-argument callable that builds one: it is called only if samples are
    missing, so reusing a finished evaluation starts no engine; then pass `engine` (the identity
    that generator will have, e.g. `GeneratorFactory.identity(model)`)."""
    return evaluate_many(factory, run_id, {benchmark: problems}, protocol, generator, grader,
                         batch_size=batch_size, progress=progress, engine=engine, limit=limit)[benchmark]


def evaluate_many(factory: sessionmaker[Session], run_id: int, problem_sets: dict[str, Sequence[Problem]],
                  protocol: EvalProtocol, generator: Generator | Callable[[], Generator], grader, *,
                  batch_size: int | None = None, progress: bool | Progress = True,
                  engine: dict[str, Any] | None = None, limit: int | None = None) -> dict[str, dict[str, Any]]:
    """`evaluate` for several benchmarks as one stream: {benchmark: result}.

    Engine calls span benchmarks that share a sampling (by default one call for all of them), so
    small benchmarks (AIME, AMC) do not make half-empty calls. Each benchmark is still its own
    evaluation row. `limit`: the limit the problems were loaded with (None: whole benchmarks); it
    enters the identity, so a table never takes a limited evaluation for a full one."""
    t0 = time.perf_counter()
    template = get_template(protocol.template)
    settings = grader.settings()
    engine = engine if engine is not None else engine_of(generator)
    results: dict[str, dict[str, Any]] = {}
    jobs: list[_Job] = []
    for benchmark, problems in problem_sets.items():
        opened = _open(factory, run_id, benchmark, problems, protocol, settings, engine, limit)
        if isinstance(opened, dict):
            results[benchmark] = opened
        else:
            jobs.append(opened)
    timing = {"generate_s": 0.0, "grade_store_s": 0.0, "wait_for_grading_s": 0.0}
    if any(j.todo for j in jobs):
        gen = generator if hasattr(generator, "generate") else generator()
        _run_batches(factory, jobs, template, protocol, gen, grader, batch_size, progress, timing)
    for job in jobs:
        metrics = _summarize(factory, job.eval_id, protocol, job.sampling.n, grader)
        metrics["timing"] = {k: round(v, 4) for k, v in timing.items()} | {"benchmarks_in_call": len(jobs)}
        with session_scope(factory) as s:
            ev = s.get(Evaluation, job.eval_id)
            ev.metrics, ev.status, ev.finished_at = metrics, "finished", utcnow()
            ev.wall_s = time.perf_counter() - t0  # calls are shared: the wall time of the whole call
        results[job.benchmark] = {"evaluation_id": job.eval_id, "metrics": metrics, "reused": False}
    return {b: results[b] for b in problem_sets}


def _open(factory, run_id, benchmark, problems, protocol, settings, engine, limit) -> _Job | dict[str, Any]:
    """The finished evaluation's result (reuse), or a job for a new or interrupted one."""
    sampling_json, eval_hash, identity = eval_identity(benchmark, problems, protocol, settings, engine, limit)
    sampling = sampling_for(benchmark, protocol)
    with session_scope(factory) as s:
        ev = s.scalars(select(Evaluation).where(Evaluation.run_id == run_id, Evaluation.benchmark == benchmark,
                                                Evaluation.eval_hash == eval_hash)).first()
        if ev is not None and ev.status == "finished":
            return {"evaluation_id": ev.id, "metrics": ev.metrics, "reused": True}
        if ev is None:
            ev = Evaluation(run_id=run_id, benchmark=benchmark, template=protocol.template, sampling=sampling_json,
                            grader=settings, eval_hash=eval_hash, n_problems=len(problems), identity=identity)
            s.add(ev)
        ev.status, ev.started_at = "running", utcnow()
        s.flush()
        stored: dict[str, set[int]] = {}
        for pid, idx in s.execute(select(Sample.problem_id, Sample.sample_index).where(Sample.evaluation_id == ev.id)):
            stored.setdefault(pid, set()).add(idx)
    todo = [p for p in problems if len(stored.get(p.id, ())) < sampling.n]
    return _Job(benchmark, ev.id, sampling, stored, todo)


def _batches(jobs: list[_Job], batch_size: int | None) -> list[list[tuple[_Job, Problem]]]:
    """Consecutive (job, problem) items, one sampling per call, at most `batch_size` (None: all) per call."""
    groups: dict[Sampling, list[tuple[_Job, Problem]]] = {}
    for job in jobs:
        groups.setdefault(job.sampling, []).extend((job, p) for p in job.todo)
    out = []
    for items in groups.values():
        size = batch_size or len(items)
        out += [items[i:i + size] for i in range(0, len(items), size)]
    return out


def _generate(batch, template, protocol, gen, limit, timing) -> tuple[list[str], list[list[Completion]]]:
    """(prompts, completions) of one engine call; prompts that do not fit the context are not sent."""
    tokenizer = getattr(gen, "tokenizer", None)
    sampling = batch[0][0].sampling
    prompts = [template.render(p.problem, tokenizer) for _, p in batch]
    n_tokens = [_count_tokens(tokenizer, text) if limit is not None else None for text in prompts]
    fits = [i for i, k in enumerate(n_tokens) if limit is None or k is None or k < limit]
    t = time.perf_counter()
    outs = gen.generate([prompts[i] for i in fits], sampling,
                        seeds=[stable_seed(protocol.seed, batch[i][0].benchmark, batch[i][1].id) for i in fits])
    timing["generate_s"] += time.perf_counter() - t
    completions: list[list[Completion]] = [[Completion("", [], TOO_LONG, n_tokens[i] or 0)] * sampling.n
                                           for i in range(len(batch))]
    for i, out in zip(fits, outs):
        completions[i] = out
    return prompts, completions


def _run_batches(factory, jobs, template, protocol, gen, grader, batch_size, progress, timing) -> None:
    limit = context_limit(gen)
    bar, own_bar = _progress(progress)
    for job in jobs:
        if job.todo:
            job.task = bar.add_task(f"{job.benchmark} (n={job.sampling.n})",
                                    total=sum(job.sampling.n - len(job.stored.get(p.id, ())) for p in job.todo))
    pool = ThreadPoolExecutor(1, thread_name_prefix="grade")  # one writer: chunks land in order
    pending: list[Future] = []
    lock = threading.Lock()
    try:
        for batch in _batches(jobs, batch_size):
            prompts, completions = _generate(batch, template, protocol, gen, limit, timing)
            _wait(pending, timing)  # surfaces a grading/storage error of the previous call
            step = max(1, STORE_CHUNK // batch[0][0].sampling.n)
            pending = [pool.submit(_grade_and_store, factory, batch[i:i + step], prompts[i:i + step],
                                   completions[i:i + step], grader, timing, lock, bar,
                                   template.scored_text)
                       for i in range(0, len(batch), step)]
        _wait(pending, timing)
    finally:
        pool.shutdown(wait=True)  # a failing call still lets the chunks in flight be written
        if own_bar:
            bar.stop()


def _wait(pending: list[Future], timing: dict[str, float]) -> None:
    t = time.perf_counter()
    for f in pending:
        f.result()
    timing["wait_for_grading_s"] += time.perf_counter() - t


def _grade_and_store(factory, batch, prompts, completions, grader, timing, lock, bar,
                     scored=lambda text: text) -> None:
    t = time.perf_counter()
    rows = []  # (job, problem, prompt, sample_index, completion)
    for (job, p), prompt, outs in zip(batch, prompts, completions):
        have = job.stored.get(p.id, set())
        rows += [(job, p, prompt, j, c) for j, c in enumerate(outs) if j not in have]
    graded = [i for i, r in enumerate(rows) if r[4].finish_reason != TOO_LONG]
    # the problem's meta goes along: multi-part answers, OlympiadBench's tolerance (harness.grading)
    verdicts = dict(zip(graded, _grade(grader, [(scored(rows[i][4].text), rows[i][1].answer, rows[i][1].meta)
                                                for i in graded])))
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
    store_samples(factory, samples)
    for job, p, _, j, _ in rows:
        job.stored.setdefault(p.id, set()).add(j)
        bar.advance(job.task, 1)
    with lock:
        timing["grade_store_s"] += time.perf_counter() - t


def store_samples(factory: sessionmaker[Session], samples: list[Sample]) -> None:
    """Insert samples in one transaction; rows another process wrote meanwhile are skipped one by one."""
    try:
        with session_scope(factory) as s:
            s.add_all(samples)
    except IntegrityError:
        for row in samples:
            try:
                with session_scope(factory) as s:
                    s.add(row)
            except IntegrityError:
                pass


def _grade(grader, pairs):
    if not pairs:
        return []
    if not getattr(grader, "takes_meta", False):  # a duck-typed grader gets (completion, gold) pairs
        pairs = [p[:2] for p in pairs]
    if hasattr(grader, "grade_async"):
        return grader.grade_async(pairs).result()
    return grader.grade(pairs)


def _summarize(factory, eval_id: int, protocol: EvalProtocol, n: int, grader=None) -> dict[str, Any]:
    with session_scope(factory) as s:
        rows = s.execute(select(Sample.problem_id, Sample.sample_index, Sample.correct, Sample.extracted,
                                Sample.completion_tokens, Sample.finish_reason)
                         .where(Sample.evaluation_id == eval_id).order_by(Sample.problem_id, Sample.sample_index)).all()
    return summarize_rows([r._asdict() for r in rows], ks=tuple(k for k in protocol.pass_k if k <= n),
                          vote_labels_of=getattr(grader, "vote_labels", None))  # maj@k: the grader's equivalence


def summarize_rows(rows: list[dict[str, Any]], ks: tuple[int, ...], vote_labels_of=None) -> dict[str, Any]:
    """metrics.summarize, plus the prompts the context could not hold: counted, and part of the truncation rate."""
    from .metrics import summarize

    out = summarize(rows, ks=ks, vote_labels_of=vote_labels_of)
    reasons = [r["finish_reason"] for r in rows]
    out["truncated"] = sum(r == "length" for r in reasons)
    out["prompt_too_long"] = sum(r == TOO_LONG for r in reasons)
    out["prompt_too_long_problems"] = len({r["problem_id"] for r in rows if r["finish_reason"] == TOO_LONG})
    out["truncation_rate"] = (out["truncated"] + out["prompt_too_long"]) / len(rows) if rows else 0.0
    return out


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
    return len(encode_prompt(tokenizer, text))  # what the generator submits (one BOS where the model has one)


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
                   batch_size: int | None = None, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Evaluate `model` on each benchmark; {benchmark: metrics}. The engine starts only if needed."""
    problem_sets = {b: load_benchmark(b, data_dir, limit) for b in benchmarks}  # bad names fail before any work
    built: list[Generator] = []

    def lazy() -> Generator:
        if not built:
            built.append(make_generator(model))
        return built[0]

    try:
        out = evaluate_many(factory, run_id, problem_sets, protocol, lazy, grader, batch_size=batch_size,
                            progress=progress, engine=engine_of(make_generator, model), limit=limit)
    finally:
        for g in built:
            g.close()
    return {b: r["metrics"] for b, r in out.items()}
