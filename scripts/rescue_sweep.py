"""Rescue rate of LatentRevise configurations vs `resample`, on ONE screening of the tiny base model.

    python scripts/rescue_sweep.py --prompts 256 \\
        --config 'generic={}' --config 'K0={"fw_steps": 0, "prefix_frac": 0.3}' --config 'resample={}'

The first `--prompts` arith-train prompts are screened once (n=8, T=1.0); the zero-hit ones are then
rescued by every named configuration (LatentReviseConfig overrides on top of --base; a name starting
with "resample" runs the matched-compute resample baseline instead). Cheaper than one
`--table ablation-*` per value because the screening is shared; the ablation tables are the
reproducible record, this is for choosing a preset's values. Rows go to a throw-away database.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--base", default='{"mine_samples": 8, "mine_max_tokens": 96, "failed_per_prompt": 1, '
                                          '"cont_samples": 4}', help="JSON overrides shared by every config")
    parser.add_argument("--config", action="append", default=[], help="NAME=JSON overrides (repeatable)")
    args = parser.parse_args()

    from harness.grading import Grader
    from harness.method import RunContext
    from harness.store import get_or_create_run, open_db
    from methods.latentrevise.mining import (
        LatentReviseConfig,
        load_frozen_model,
        rescue_latentrevise,
        rescue_stats,
        screen,
    )
    from methods.resample import MatchedRescueConfig, rescue_resample
    from repro.presets import TINY
    from repro.runs import generator_factory, load_train_prompts, resolve_base_model

    configs = {name: json.loads(js) for name, js in (c.split("=", 1) for c in args.config)}
    base = json.loads(args.base)
    model_dir = resolve_base_model(TINY)
    out = Path(tempfile.mkdtemp(prefix="rescue-sweep-"))
    db = open_db(out / "sweep.db")
    run, _ = get_or_create_run(db, method="rescue-sweep", model=model_dir, preset=TINY.name, seed=0, config=base)
    with Grader() as grader:
        gen = generator_factory(TINY)(model_dir)
        ctx = RunContext(run_id=run.id, db=db, out_dir=out, template=TINY.eval.template, grader=grader, progress=False)
        model, tok = load_frozen_model(model_dir, "cpu")
        screened = screen(load_train_prompts(TINY)[: args.prompts], gen, tok, LatentReviseConfig(**base), ctx)
        zero = [s for s in screened if s.zero_hit]
        print(f"{len(screened)} prompts screened, {len(zero)} zero-hit at n={base.get('mine_samples', 8)}")
        print("| config | rescued | clean | FTE / zero-hit prompt | wall s |\n|---|---|---|---|---|")
        for name, over in configs.items():
            t0 = time.perf_counter()
            if name.startswith("resample"):
                outs = rescue_resample(zero, model, tok, gen, MatchedRescueConfig(**{**base, **over}), ctx)
            else:
                outs = rescue_latentrevise(zero, model, tok, gen, LatentReviseConfig(**{**base, **over}), ctx)
            st = rescue_stats(name, screened, outs)
            print(f"| {name} {json.dumps(over)} | {st['n_rescued']}/{len(zero)} | {st['n_rescued_clean']} | "
                  f"{st['fte_per_zero_hit']:.0f} | {time.perf_counter() - t0:.0f} |", flush=True)
        gen.close()


if __name__ == "__main__":
    main()
