"""`reproduce.py --table X`: plan the runs a table needs, run or reuse them, print the table.

    steps = plan_table("main", preset, factory)   # base + sft, grpo, lr-sft, lr-grpo: "reuse" | "evaluate" | "run"
    execute(steps, preset, factory)               # runner.train_method + runner.evaluate_run for what is missing
    print(render(build_table("main", ...), fmt))  # a pure function of results.db

Reuse is decided by the run's config hash (runner.run_config + the hash `get_or_create_run`
computes), so a second invocation starts no engine and trains nothing. Planning is offline: it
resolves no model and loads no benchmark from the hub, so `--preset paper --dry-run` works on a
machine without network. Ablations are data (ABLATIONS): one LatentRevise config field and the
values to sweep, checked against the config dataclass before anything runs.

GPU-hour estimate (`--dry-run` on a GPU preset), per run, on one H100:

    hours = (generated_tokens / GEN_TOK_S[size] + trained_tokens * 6 * params / (MFU * H100_BF16_FLOPS)) / 3600

generated_tokens = prompts x samples x mean completion length (MEAN_COMPLETION_FRAC x max_tokens);
trained_tokens = tokens that get a forward and backward pass (policy updates, SFT examples,
Frank-Wolfe steps on a prefix). The per-method counts come from `estimate_tokens` below, which
reads the method's config; every assumption is printed with the estimate.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from harness.store import Evaluation, Run, config_hash, normalize_url, open_db, session_scope
from repro.presets import Preset, get_preset
from repro.tables import TableData, main_table, matches, render

MAIN_METHODS = ("sft", "grpo", "lr-sft", "lr-grpo")
RESCUE_METHODS = ("lr-sft", "resample", "hint")  # the rescue comparison: LatentRevise vs resample vs hint
LATENTREVISE_METHOD = "lr-sft"  # whose config the ablations vary


# ---------------------------------------------------------------------------------------------
# ablations: data, in one place
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ablation:
    name: str
    field: str  # a field of the LatentRevise config dataclass
    values: tuple[Any, ...]
    what: str
    trains: bool = False  # True: each variant trains a model, so the table adds downstream accuracy


ABLATIONS: dict[str, Ablation] = {a.name: a for a in (
    Ablation("k", "fw_steps", (0, 1, 3, 10, 20), "number of Frank-Wolfe steps K (0: no revision, continue "
             "from the original prefix)"),
    Ablation("prefix", "prefix_frac", (0.25, 0.5, 0.75), "prefix length L, as a fraction of the failed rollout "
             "(L = clamp(round(prefix_frac x |y|), prefix_min_tokens, prefix_max_tokens))"),
    Ablation("loss", "loss_terms", ("gold", "away", "both"), "objective: toward-gold only, away-only, both"),
    Ablation("hull", "hull", (True, False), "convex-hull constraint (Frank-Wolfe) vs unconstrained normalized-"
             "gradient steps + nearest-token projection"),
    Ablation("prefix-mode", "train_prefix", ("discrete", "latent"), "training data continues from the discrete "
             "prefix p' or from the latent prefix", trains=True),
)}
# Ablations that do not train measure rescue only: lr-sft mines and revises, then takes 0 SFT steps.
MINING_ONLY = {"max_steps": 0}
# Extra overrides per preset that keep every ablation variant cheap (a subset of the training prompts).
ABLATION_BUDGET: dict[str, dict[str, Any]] = {"tiny": {"mine_prompts": 128}, "tiny-smoke": {"mine_prompts": 32}}


def ablation_overrides(abl: Ablation, preset: Preset) -> dict[str, Any]:
    """What every variant of `abl` sets besides the ablated field."""
    return {**ABLATION_BUDGET.get(preset.name, {}), **({} if abl.trains else MINING_ONLY)}


def ablation(name: str) -> Ablation:
    if name not in ABLATIONS:
        raise KeyError(f"unknown ablation {name!r}; known: {', '.join(ABLATIONS)}")
    return ABLATIONS[name]


def check_ablation(abl: Ablation, method: str = LATENTREVISE_METHOD) -> None:
    """Fail before running anything when the LatentRevise config has no such field."""
    from methods.registry import get_method

    cls = get_method(method).config_cls
    names = {f.name for f in dataclasses.fields(cls)}
    if abl.field not in names:
        raise ValueError(f"ablation {abl.name!r} varies {cls.__module__}.{cls.__name__}.{abl.field}, which does "
                         f"not exist; fields: {', '.join(sorted(names))} (fix ABLATIONS in repro/pipeline.py)")


# ---------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------

@dataclass
class Step:
    label: str  # row label, e.g. "lr-sft" or "lr-sft fw_steps=4"
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    evaluate: bool = True  # the table needs this run's evaluations
    config_hash: str = ""
    action: str = "run"  # reuse | evaluate | run | resume | error
    run_id: int | None = None
    detail: str = ""
    estimate: dict[str, Any] | None = None


def run_hash(preset: Preset, method: str, overrides: dict[str, Any] | None = None) -> str:
    """The config hash `get_or_create_run` will compute for this run (offline: nothing is resolved)."""
    from repro.runs import base_config, run_config

    config = base_config(preset) if method == "base" else run_config(preset, method, overrides)[1]
    return config_hash({"method": method, "model": preset.base_model, "config": config})


def table_steps(table: str, preset: Preset) -> list[Step]:
    """The runs `table` needs, before looking at the database."""
    if table == "main":
        return [Step(m, m) for m in ("base", *MAIN_METHODS)]
    if table == "reference":  # our base-model numbers beside the published ones, where any are published
        from repro.reference import models_with_reference

        return [Step("base", "base")] if preset.base_model in models_with_reference() else []
    if table == "rescue":  # the main table's lr-sft run (its mining phase), the baselines mining only
        return [Step(m, m, {} if m == LATENTREVISE_METHOD else dict(MINING_ONLY), evaluate=False)
                for m in RESCUE_METHODS]
    if table.startswith("ablation-"):
        abl = ablation(table.removeprefix("ablation-"))
        check_ablation(abl)
        budget = ablation_overrides(abl, preset)
        steps = [Step(f"{LATENTREVISE_METHOD} {abl.field}={v!r}", LATENTREVISE_METHOD,
                      {**budget, abl.field: v}, evaluate=abl.trains) for v in abl.values]
        return ([Step("base", "base")] if abl.trains else []) + steps
    raise ValueError(f"unknown table {table!r}; use main, rescue, reference or ablation-<{'|'.join(ABLATIONS)}>")


def plan_table(table: str, preset: Preset, factory: sessionmaker[Session] | None, fresh: bool = False) -> list[Step]:
    """Steps with their action: what the database already has decides reuse."""
    steps = table_steps(table, preset)
    for st in steps:
        try:
            st.config_hash = run_hash(preset, st.method, st.overrides)
        except Exception as e:  # an unknown method or a bad override: say so, run the rest
            st.action, st.detail = "error", f"{type(e).__name__}: {e}"
            continue
        if factory is None:
            continue
        with session_scope(factory) as s:
            run = s.scalars(select(Run).where(Run.method == st.method, Run.config_hash == st.config_hash)).first()
            if run is None:
                continue
            st.run_id = run.id
            if fresh:
                st.action, st.detail = "run", "fresh: the stored run is deleted and recomputed"
            elif run.status != "finished":
                st.action, st.detail = "resume", f"stored run #{run.id} is {run.status}"
            else:
                missing = missing_evaluations(s, run, preset) if st.evaluate else []
                st.action = "evaluate" if missing else "reuse"
                st.detail = f"run #{run.id}" + (f"; to evaluate: {', '.join(missing)}" if missing else "")
    return steps


def missing_evaluations(s: Session, run: Run, preset: Preset) -> list[str]:
    evs = s.scalars(select(Evaluation).where(Evaluation.run_id == run.id, Evaluation.status == "finished")).all()
    done = {e.benchmark for e in evs if matches(e, preset.eval)}
    return [b for b in preset.benchmarks if b not in done]


# ---------------------------------------------------------------------------------------------
# the GPU-hour estimate (GPU presets only)
# ---------------------------------------------------------------------------------------------

H100_BF16_FLOPS = 989e12  # dense bf16 peak, H100 SXM
MFU = 0.35  # assumed model-FLOPs utilization of the trainer
GEN_TOK_S = {1.5: 20_000.0, 7.0: 6_000.0}  # assumed vLLM decode tokens/s, one H100, large batch, half the memory
MEAN_COMPLETION_FRAC = 0.25  # assumed mean completion length / max_tokens (base models stop early; clipped ones don't)
KNOWN_SIZES = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "olympiadbench": 675, "math_train": 5586}


def params_b(model: str) -> float | None:
    m = re.search(r"(\d+(?:\.\d+)?)B\b", model, re.I)
    return float(m.group(1)) if m else None


def dataset_size(name: str, data_dir: str | None, filt: dict | None = None, limit: int | None = None) -> tuple[int, str]:
    """(problems, where the count comes from): the local file when there is one, never the hub."""
    from benchmarks.registry import load_benchmark, resolve_data_dir

    d = resolve_data_dir(data_dir)
    if d is not None and d.is_dir():
        try:
            probs = load_benchmark(name, d)
            for key, allowed in (filt or {}).items():
                probs = [p for p in probs if p.meta.get(key) in allowed]
            n = len(probs)
            return (min(n, limit) if limit else n), f"counted in {d}"
        except Exception:  # noqa: BLE001  (fall back to the published size)
            pass
    n = KNOWN_SIZES.get(name, 0)
    return (min(n, limit) if limit else n), "published size (assumed)"


PROMPT_TOKENS = 150  # assumed mean prompt length (tokens) of a MATH-style problem under the template
ZERO_HIT_FRAC = 0.25  # assumed share of training prompts on which every mining sample fails
GOLD_TOKENS = 16  # tokens of the teacher-forced gold answer statement in a revision


def estimate_tokens(method: str, cfg: Any, n_train: int, frac: float) -> tuple[float, float, str]:
    """(generated tokens, trained tokens, formula) of training `method`; reads its config, defaults if absent.

    trained tokens count one forward + backward; a forward-only pass counts as a third of one."""
    g = lambda name, default: getattr(cfg, name, default)  # noqa: E731
    gen = trained = 0.0
    how: list[str] = []
    if method.endswith("grpo"):
        steps, batch, group = g("steps", 100), g("prompts_per_step", 64), g("group_size", 8)
        length = frac * g("max_tokens", 1024)
        rollouts = steps * batch * group * length
        forwards = 1 + (g("kl_coef", 0.0) > 0)  # old-policy logprobs, + the reference model with a KL term
        gen, trained = rollouts, rollouts * (1 + forwards / 3)
        how.append(f"{steps} steps x {batch} prompts x {group} rollouts x {length:.0f} tok")
    elif hasattr(cfg, "epochs"):  # SFT family
        n_ex = n_train * (1 + (g("rft_keep_per_prompt", 4) if g("data", "reference") != "reference" else 0))
        if g("data", "reference") != "reference":
            gen += n_train * g("rft_samples", 8) * frac * g("rft_max_tokens", 1024)
            how.append(f"RFT {n_train} x {g('rft_samples', 8)} samples")
        seen = n_ex * g("epochs", 1)
        if g("max_steps", None) is not None:
            seen = min(seen, g("max_steps", None) * g("batch_size", 64))
        resp = frac * g("max_len", 2048)
        trained += seen * (PROMPT_TOKENS + resp)
        how.append(f"{seen:,.0f} examples x {PROMPT_TOKENS + resp:.0f} tok")
    if hasattr(cfg, "mine_samples"):  # LatentRevise mining (and the matched rescue baselines)
        n_mine = min(n_train, g("mine_prompts", None) or n_train)
        length = frac * g("mine_max_tokens", 1024)
        gen += n_mine * g("mine_samples", 8) * length
        revisions = n_mine * ZERO_HIT_FRAC * g("failed_per_prompt", 2)
        prefix = min(g("prefix_max_tokens", 256) or length, g("prefix_frac", 0.5) * length)
        away = min(g("away_max_tokens", 128) or length, length - prefix)
        trained += revisions * g("fw_steps", 10) * 2 * (prefix + GOLD_TOKENS + away)  # gold and away rows
        modes = 2 if g("cont_modes", "both") == "both" else 1
        gen += revisions * modes * g("cont_samples", 4) * (length - prefix)
        how.append(f"mining {n_mine} x {g('mine_samples', 8)} samples; {revisions:,.0f} revisions x "
                   f"K={g('fw_steps', 10)} (zero-hit share {ZERO_HIT_FRAC} assumed)")
    return gen, trained, "; ".join(how) or "no training"


def estimate_step(st: Step, preset: Preset, data_dir: str | None) -> dict[str, Any] | None:
    size = params_b(preset.base_model)
    if preset.device != "cuda" or size is None or st.action == "error":
        return None
    completion = MEAN_COMPLETION_FRAC * preset.eval.max_tokens
    gen_s = GEN_TOK_S.get(size, GEN_TOK_S[7.0] * 7.0 / size)  # other sizes: decode scales ~ 1 / params
    eval_tokens = 0.0
    if st.evaluate:
        for b in preset.benchmarks:
            eval_tokens += dataset_size(b, data_dir)[0] * preset.eval.n_for(b) * completion
    n_train, _ = dataset_size(preset.train_set, data_dir, preset.train_filter, preset.train_limit)
    if st.method == "base":
        gen, trained, how = 0.0, 0.0, "no training"
    else:
        from repro.runs import run_config

        gen, trained, how = estimate_tokens(st.method, run_config(preset, st.method, st.overrides)[0], n_train,
                                            MEAN_COMPLETION_FRAC)
    flops_s = MFU * H100_BF16_FLOPS
    hours = ((gen + eval_tokens) / gen_s + trained * 6 * size * 1e9 / flops_s) / 3600
    return {"gpu_hours": hours, "generated": gen, "eval_generated": eval_tokens, "trained": trained, "how": how}


def assumptions(preset: Preset, data_dir: str | None) -> list[str]:
    size = params_b(preset.base_model) or 0
    counted = {b: dataset_size(b, data_dir) for b in preset.benchmarks}
    counted[preset.train_set] = dataset_size(preset.train_set, data_dir, preset.train_filter, preset.train_limit)
    sizes = ", ".join(f"{b}={n} ({where})" for b, (n, where) in counted.items())
    return [
        "GPU hours on one H100 = (generated tokens / decode tok/s + trained tokens x 6 x params / (MFU x peak)) / 3600",
        f"decode {GEN_TOK_S.get(size, GEN_TOK_S[7.0] * 7.0 / max(size, 1e-9)):,.0f} tok/s for a {size}B model "
        f"(vLLM, large batch); MFU {MFU}; peak {H100_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16",
        f"mean completion = {MEAN_COMPLETION_FRAC} x the run's max tokens (evaluation: "
        f"{MEAN_COMPLETION_FRAC * preset.eval.max_tokens:.0f}); prompt prefill ignored in generation; SFT examples "
        f"{PROMPT_TOKENS} prompt tokens + {MEAN_COMPLETION_FRAC} x max_len; zero-hit share {ZERO_HIT_FRAC}",
        f"dataset sizes: {sizes}",
    ]


# ---------------------------------------------------------------------------------------------
# executing the plan
# ---------------------------------------------------------------------------------------------

def execute(steps: list[Step], preset: Preset, factory: sessionmaker[Session], *, data_dir: str | None,
            fresh: bool, console: Console) -> list[str]:
    """Run what is missing; a failing step is recorded (runner marks the run failed) and the rest go on."""
    from repro import runs as runner

    failures: list[str] = []
    todo = [st for st in steps if st.action in ("run", "resume", "evaluate")]
    if not todo:
        return failures
    from harness.grading import Grader

    grader = Grader()
    try:
        for st in todo:
            t0 = time.perf_counter()
            console.print(f"[bold]{st.action}[/bold] {escape(st.label)} ...")
            try:
                if st.method == "base":
                    run = runner.base_run(factory, preset, fresh=fresh)
                else:
                    run = runner.train_method(factory, preset, st.method, overrides=st.overrides, data_dir=data_dir,
                                              grader=grader, fresh=fresh)
                st.run_id = run.id
                if st.evaluate:
                    runner.evaluate_run(factory, run, preset, data_dir=data_dir, grader=grader)
            except Exception as e:  # noqa: BLE001  (the table notes the failed run; others still run)
                failures.append(f"{st.label}: {type(e).__name__}: {e}")
                why = escape("".join(traceback.format_exception_only(e)).strip())
                console.print(f"[red]{escape(st.label)} failed[/red]: {why}")
                continue
            console.print(f"{st.label}: done in {time.perf_counter() - t0:.1f} s (run #{st.run_id})")
    finally:
        grader.close()
    return failures


# ---------------------------------------------------------------------------------------------
# tables and the entry point
# ---------------------------------------------------------------------------------------------

def planned_hashes(steps: list[Step]) -> dict[str, str]:
    """method -> the config hash the plan made for it (methods planned once; ablation variants are not)."""
    methods = [st.method for st in steps]
    return {st.method: st.config_hash for st in steps if st.config_hash and methods.count(st.method) == 1}


def build_table(table: str, preset: Preset, factory: sessionmaker[Session], steps: list[Step]) -> TableData:
    prefer = planned_hashes(steps)
    if table == "main":
        return main_table(factory, preset, prefer=prefer)
    if table == "reference":
        from repro.reference import reference_table

        return reference_table(factory)
    if table == "rescue":
        from repro.tables import rescue_table

        result = rescue_table(factory, preset, methods=RESCUE_METHODS, prefer=prefer)
        result.notes.append(f"{', '.join(m for m in RESCUE_METHODS if m != LATENTREVISE_METHOD)}: mining only "
                            f"({', '.join(f'{k}={v}' for k, v in MINING_ONLY.items())}); {LATENTREVISE_METHOD}: "
                            "the main table's run (its mining phase)")
        return result
    from repro.tables import ablation_table

    abl = ablation(table.removeprefix("ablation-"))
    variants = [(st.overrides[abl.field], st.config_hash) for st in steps if abl.field in st.overrides]
    table = ablation_table(factory, preset, abl.name, abl.field, variants, abl.what,
                           budget=ablation_overrides(abl, preset))
    if not abl.trains:
        table.notes.append(f"mining only ({', '.join(f'{k}={v}' for k, v in MINING_ONLY.items())}): each variant "
                           "screens, revises and verifies, then trains nothing; no downstream accuracy")
    return table


def print_plan(steps: list[Step], preset: Preset, table: str, console: Console, data_dir: str | None,
               estimate: bool) -> None:
    t = Table(title=f"plan: --table {table} --preset {preset.name} ({preset.base_model})")
    for c in ("run", "method", "overrides", "config hash", "action", "detail") + (("GPU h", "tokens") if estimate else ()):
        t.add_column(c, overflow="fold")
    total = 0.0
    for st in steps:
        cells = [st.label, st.method, ", ".join(f"{k}={v!r}" for k, v in st.overrides.items()),
                 st.config_hash[:12], st.action, st.detail]
        if estimate:
            est = st.estimate = estimate_step(st, preset, data_dir)
            if est:
                total += est["gpu_hours"]
                cells += [f"{est['gpu_hours']:.1f}", f"gen {est['generated'] / 1e6:.1f}M + eval "
                          f"{est['eval_generated'] / 1e6:.1f}M, train {est['trained'] / 1e6:.1f}M ({est['how']})"]
            else:
                cells += ["", ""]
        t.add_row(*cells)
    console.print(t)
    console.print(f"benchmarks: {', '.join(preset.benchmarks)}; protocol: template {preset.eval.template}, "
                  f"T={preset.eval.temperature}, top-p {preset.eval.top_p}, max {preset.eval.max_tokens} tokens, n="
                  + ", ".join(f"{b}:{preset.eval.n_for(b)}" for b in preset.benchmarks), highlight=False)
    if estimate:
        console.print(f"estimate: {total:.1f} GPU hours in total (one H100), runs marked reuse included", highlight=False)
        for line in assumptions(preset, data_dir):
            console.print(f"  - {line}", highlight=False)


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 -> 2 for the block, inherited by child processes (engines), then restored."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout (some embedded runners): nothing to protect
        yield
        return
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def reproduce(table: str | None = "main", preset: str = "tiny", plot_dir: str | None = None, dry_run: bool = False,
              fresh: bool = False, fmt: str = "rich", db: str = "results.db", data_dir: str | None = None) -> TableData | None:
    """Plan, run or reuse, print. Returns the table (None for a dry run)."""
    p = get_preset(preset)
    table = table or "main"
    if fmt not in ("rich", "csv", "json", "markdown"):
        raise ValueError(f"unknown format {fmt!r}; use rich, csv, json or markdown")
    if data_dir:
        os.environ.setdefault("LATENTREVISE_DATA_DIR", str(data_dir))
    url = normalize_url(db)
    exists = not url.startswith("sqlite:///") or Path(url.removeprefix("sqlite:///")).exists()
    # The plan goes to stdout for a dry run (it is the output), to stderr otherwise (stdout is the table).
    console = Console(file=sys.stdout if dry_run else sys.stderr, width=160)
    factory = open_db(url) if (exists or not dry_run) else None
    steps = plan_table(table, p, factory, fresh)
    gpu = p.device.startswith("cuda") and params_b(p.base_model) is not None
    print_plan(steps, p, table, console, data_dir, estimate=dry_run and gpu)
    if dry_run and not gpu:
        console.print(f"{p.name} is a CPU preset: no GPU-hour estimate", highlight=False)
    if dry_run:
        return None
    t0 = time.perf_counter()
    with stdout_to_stderr():  # vLLM and its engine processes log to stdout; stdout is for the table
        failures = execute(steps, p, factory, data_dir=data_dir, fresh=fresh, console=console)
    result = build_table(table, p, factory, steps)
    result.notes += [f"not planned: {st.label}: {st.detail}" for st in steps if st.action == "error"]
    result.notes += [f"failed this invocation: {f}" for f in failures]
    console.print(f"runs and evaluations: {time.perf_counter() - t0:.1f} s; table from {url}", highlight=False)
    print(render(result, fmt), end="")
    if plot_dir:
        from repro.plots import write_figures

        for path in write_figures(factory, p, plot_dir, planned_hashes(steps)):
            console.print(f"wrote {path}")
    return result
