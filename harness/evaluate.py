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

Concurrency: two processes filling the same evaluation (two `--table` commands sharing a base
run) split its problems instead of both generating them: a process generates only the problems it
holds a claim on (`harness.claims`; up to `batch_size` per round, all by default) and waits for
the problems another live process holds, taking them over if that process dies. With the default
single engine call the first process claims everything and the second waits; with `batch_size`
they take turns batch by batch.

Throughput: by default all missing problems of one sampling (across benchmarks) go to the engine
in ONE call, because vLLM's throughput falls with smaller calls (measured: batches of 64 problems
cost 1.44x one call); `batch_size` caps a call when a crash should lose less work. Results are
graded and written in chunks on a background thread, one transaction each. Prompts longer than the
model's context are stored as incorrect samples with finish_reason "prompt_too_long" and counted
in the metrics (`prompt_too_long`, and in `truncation_rate`), instead of failing the whole call.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from benchmarks import Problem, load_benchmark

from .claims import Claimant, ClaimPolicy
from .generation import Completion, Generator, Sampling, encode_prompt, stable_seed
from .grading import GRADER_POLICY_VERSION
from .prompts import get_template, stop_sequences
from .protocol import EvalProtocol
from .store import Evaluation, Sample, config_hash, get_or_create, session_scope, utcnow

log = logging.getLogger(__name__)
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
    """One evaluation being filled: its row, its sampling, what is stored, what this process generates."""

    benchmark: str
    eval_id: int
    sampling: Sampling
    problems: Sequence[Problem]
    stored: dict[str, set[int]]
    todo: list[Problem] = field(default_factory=list)  # this round: missing and claimed by this process
    generated: set[str] = field(default_factory=set)  # problems this process has sent to the engine
    waiting_for: str = ""  # who holds the other missing problems ("" when none)
    task: Any = None  # its progress-bar task
    total: int = 0  # the bar's total: samples missing when the bar was made

    def missing(self) -> list[Problem]:
        return [p for p in self.problems if len(self.stored.get(p.id, ())) < self.sampling.n]

    def missing_samples(self) -> int:
        return sum(self.sampling.n - len(self.stored.get(p.id, ())) for p in self.missing())


def evaluate(factory: sessionmaker[Session], run_id: int, benchmark: str, problems: Sequence[Problem],
             protocol: EvalProtocol, generator: Generator | Callable[[], Generator], grader, *,
             batch_size: int | None = None, progress: bool | Progress = True, engine: dict[str, Any] | None = None,
             limit: int | None = None, claims: ClaimPolicy | None = None) -> dict[str, Any]:
    """Evaluate `problems` (resuming or reusing); returns {"evaluation_id", "metrics", "reused"}.

    `generator` may be a zero-argument callable that builds one: it is called only if samples are
    missing, so reusing a finished evaluation starts no engine; then pass `engine` (the identity
    that generator will have, e.g. `GeneratorFactory.identity(model)`)."""
    return evaluate_many(factory, run_id, {benchmark: problems}, protocol, generator, grader,
                         batch_size=batch_size, progress=progress, engine=engine, limit=limit,
                         claims=claims)[benchmark]


def evaluate_many(factory: sessionmaker[Session], run_id: int, problem_sets: dict[str, Sequence[Problem]],
                  protocol: EvalProtocol, generator: Generator | Callable[[], Generator], grader, *,
                  batch_size: int | None = None, progress: bool | Progress = True,
                  engine: dict[str, Any] | None = None, limit: int | None = None,
                  claims: ClaimPolicy | None = None) -> dict[str, dict[str, Any]]:
    """`evaluate` for several benchmarks as one stream: {benchmark: result}.

    Engine calls span benchmarks that share a sampling (by default one call for all of them), so
    small benchmarks (AIME, AMC) do not make half-empty calls. Each benchmark is still its own
    evaluation row. `limit`: the limit the problems were loaded with (None: whole benchmarks); it
    enters the identity, so a table never takes a limited evaluation for a full one. `claims`: how
    long another process's claim on a problem is honoured (`harness.claims`)."""
    t0 = time.perf_counter()
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
    if any(j.missing() for j in jobs):
        _fill(factory, jobs, protocol, generator, grader, batch_size, progress, timing, Claimant(factory, claims))
    for job in jobs:
        metrics = _summarize(factory, job.eval_id, protocol, job.sampling.n, grader)
        metrics["timing"] = {k: round(v, 4) for k, v in timing.items()} | {"benchmarks_in_call": len(jobs)}
        with session_scope(factory) as s:
            ev = s.get(Evaluation, job.eval_id, with_for_update=True)
            if ev.status == "finished":  # a process that shared the work finished it first: its row stands
                metrics = ev.metrics
            else:
                ev.metrics, ev.status, ev.finished_at = metrics, "finished", utcnow()
                ev.wall_s = time.perf_counter() - t0  # calls are shared: the wall time of the whole call
        results[job.benchmark] = {"evaluation_id": job.eval_id, "metrics": metrics, "reused": False}
    return {b: results[b] for b in problem_sets}


def _open(factory, run_id, benchmark, problems, protocol, settings, engine, limit) -> _Job | dict[str, Any]:
    """The finished evaluation's result (reuse), or a job for a new or interrupted one."""
    sampling_json, eval_hash, identity = eval_identity(benchmark, problems, protocol, settings, engine, limit)
    sampling = sampling_for(benchmark, protocol)
    with session_scope(factory) as s:  # get_or_create: a second process opening it at once gets the same row
        ev, _ = get_or_create(s, Evaluation, {"run_id": run_id, "benchmark": benchmark, "eval_hash": eval_hash},
                              {"template": protocol.template, "sampling": sampling_json, "grader": settings,
                               "n_problems": len(problems), "identity": identity})
        if ev.status == "finished":
            return {"evaluation_id": ev.id, "metrics": ev.metrics, "reused": True}
        ev.status, ev.started_at = "running", utcnow()
        eval_id = ev.id
    return _Job(benchmark, eval_id, sampling, problems, _stored(factory, eval_id))


def _stored(factory, eval_id: int) -> dict[str, set[int]]:
    """{problem id: stored sample indices} of an evaluation."""
    stored: dict[str, set[int]] = {}
    with session_scope(factory) as s:
        query = select(Sample.problem_id, Sample.sample_index).where(Sample.evaluation_id == eval_id)
        for pid, idx in s.execute(query):
            stored.setdefault(pid, set()).add(idx)
    return stored


def _fill(factory, jobs, protocol, generator, grader, batch_size, progress, timing, claimant: Claimant) -> None:
    """Generate the jobs' missing samples, in rounds: claim, generate what is ours, wait for the rest.

    Grading runs on one background writer thread across rounds (a call is graded while the engine
    runs the next). The engine is built (when `generator` is a factory) only once a round has
    problems to generate, so a process that only waits for another never starts one."""
    template = get_template(protocol.template)
    bar, own_bar = _progress(progress)
    writer = _Writer(factory, grader, template.scored_text, bar, timing)
    built: list[Generator] = []
    try:
        with claimant.alive():
            while True:
                others_left = _claim_round(claimant, jobs, batch_size, bar)
                if any(j.todo for j in jobs):
                    if not built:
                        built.append(generator if hasattr(generator, "generate") else generator())
                    _run_batches(jobs, template, protocol, built[0], batch_size, writer, timing)
                elif writer.pending:
                    writer.wait()  # our last call's samples first: they may be all that is missing
                elif others_left:
                    time.sleep(claimant.policy.poll_s)
                else:
                    break
        _check_complete(jobs)
    finally:
        writer.close()  # a failing call still lets the chunks in flight be written
        claimant.release()  # also after a failure: a waiting process takes the rest at once
        if own_bar:
            bar.stop()


def _claim_round(claimant: Claimant, jobs: list[_Job], batch_size: int | None, bar: Progress) -> bool:
    """Set each job's `todo` to missing problems this process now holds (at most `batch_size` per
    sampling, as one engine call would take); True while problems that this process has not
    generated are missing (someone else's, or claimable next round).

    Stored samples are re-read after claiming, so a problem another process finished (and released)
    meanwhile is not generated again."""
    room: dict[Sampling, int | None] = {}
    others_left = False
    for job in jobs:
        left = room.setdefault(job.sampling, batch_size)
        candidates = [p.id for p in job.missing() if p.id not in job.generated]
        mine = claimant.claim(job.eval_id, candidates, limit=left) if candidates and left != 0 else set()
        job.stored = _stored(claimant.factory, job.eval_id)
        missing = [p for p in job.missing() if p.id not in job.generated]
        job.todo = [p for p in missing if p.id in mine]
        if left is not None:
            room[job.sampling] = left - len(job.todo)
        holders = sorted(set(claimant.others(job.eval_id, [p.id for p in missing if p.id not in mine]).values()))
        job.waiting_for = ", ".join(holders[:2]) + (" ..." if len(holders) > 2 else "")
        if job.waiting_for and not job.todo:
            log.info("%s: waiting for %s, which is generating its missing problems", job.benchmark, job.waiting_for)
        _show(bar, job)
        others_left = others_left or bool(missing)
    return others_left


def _check_complete(jobs: list[_Job]) -> None:
    for job in jobs:
        short = [p.id for p in job.missing()]
        if short:  # every one was sent to the engine: it returned fewer samples than asked for
            raise RuntimeError(f"{job.benchmark}: the engine returned fewer than n={job.sampling.n} samples for "
                               f"problem {short[0]!r} ({len(short)} problems)")


def _show(bar: Progress, job: _Job) -> None:
    """The job's bar: samples stored out of the samples missing when it started, and whom it waits for."""
    missing = job.missing_samples()
    if job.task is None:
        job.total, job.task = missing, bar.add_task("", total=missing)
    waiting = f" · waiting for {job.waiting_for}" if job.waiting_for and not job.todo else ""
    bar.update(job.task, completed=max(0, job.total - missing),
               description=f"{job.benchmark} (n={job.sampling.n}){waiting}")


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


def _run_batches(jobs, template, protocol, gen, batch_size, writer: _Writer, timing) -> None:
    """Generate every job's `todo` and hand each call to the writer; its last call may still be grading."""
    limit = context_limit(gen)
    for job in jobs:
        job.generated.update(p.id for p in job.todo)
    for batch in _batches(jobs, batch_size):
        prompts, completions = _generate(batch, template, protocol, gen, limit, timing)
        writer.wait()  # surfaces a grading/storage error of the previous call
        writer.submit(batch, prompts, completions)


class _Writer:
    """One background thread that grades and stores engine calls in order, one chunk per transaction."""

    def __init__(self, factory, grader, scored_text, bar, timing):
        self.factory, self.grader, self.scored_text, self.bar, self.timing = factory, grader, scored_text, bar, timing
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="grade")  # one writer: chunks land in order
        self.pending: list[Future] = []
        self.lock = threading.Lock()

    def submit(self, batch, prompts, completions) -> None:
        step = max(1, STORE_CHUNK // batch[0][0].sampling.n)
        self.pending = [self.pool.submit(_grade_and_store, self.factory, batch[i:i + step], prompts[i:i + step],
                                         completions[i:i + step], self.grader, self.timing, self.lock, self.bar,
                                         self.scored_text)
                        for i in range(0, len(batch), step)]

    def wait(self) -> None:
        t = time.perf_counter()
        pending, self.pending = self.pending, []
        for f in pending:
            f.result()
        self.timing["wait_for_grading_s"] += time.perf_counter() - t

    def close(self) -> None:
        self.pool.shutdown(wait=True)


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
