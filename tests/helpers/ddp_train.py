"""One SFT or GRPO run on the random tiny model, in however many processes launched it (torchrun/accelerate).

Used by tests/test_multiprocess.py: the same run single-process and as 2 gloo processes must give the same
per-step grad norms and losses and the same final weights. Each rank logs into its own SQLite file (the
methods log from every rank; a rank-0-only store is the CLI's job), and rank 0's steps are written as JSON.

    torchrun --nproc_per_node 2 tests/helpers/ddp_train.py sft MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import Problem  # noqa: E402
from harness.generation import HFGenerator  # noqa: E402
from harness.grading import Verdict  # noqa: E402
from harness.method import RunContext  # noqa: E402
from harness.store import TrainStep, get_or_create_run, open_db, session_scope  # noqa: E402
from methods.grpo import GRPO, GRPOConfig  # noqa: E402
from methods.sft import SFT, SFTConfig  # noqa: E402


class DigitGrader:
    """A completion is "correct" when it contains the digit 1: learnable, with a mixed base rate."""

    def grade(self, pairs):
        return [Verdict(None, "1" in c, 0.0, None) for c, _ in pairs]


def problems(n: int) -> list[Problem]:
    return [Problem(f"p{i}", f"{a}+{b}", str(a + b), {"solution": f"{a}+{b}={a + b}. The final answer is "
                                                                  f"\\boxed{{{a + b}}}."})
            for i, (a, b) in enumerate((a, b) for a in range(0, 60, 6) for b in range(0, 40, 10))][:n]


def main(method: str, model_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    db = open_db(f"sqlite:///{out / f'rank{rank}.db'}")
    run, _ = get_or_create_run(db, method=method, model="tiny", preset="test", seed=0, config={})
    ctx = RunContext(run_id=run.id, db=db, out_dir=out / f"work{rank}", seed=0, template="tiny-boxed",
                     make_generator=lambda path: HFGenerator(path, None), grader=DigitGrader(), progress=False)
    if method == "sft":
        cfg = SFTConfig(epochs=2, batch_size=8, micro_batch_size=2, lr=3e-3, warmup_ratio=0.1,
                        response_prefix=" ", heldout_frac=0.1, max_len=64)
        ckpt = SFT().train(model_dir, problems(40), cfg, ctx)
    else:
        cfg = GRPOConfig(steps=3, prompts_per_step=4, group_size=4, max_tokens=8, lr=3e-3, micro_batch_size=4)
        ckpt = GRPO().train(model_dir, problems(8), cfg, ctx)
    from accelerate import PartialState

    if rank == 0:
        with session_scope(db) as s:
            steps = [{"phase": r.phase, "step": r.step, "loss": r.loss, "grad_norm": r.grad_norm}
                     for r in s.query(TrainStep).order_by(TrainStep.phase, TrainStep.step)]
        (out / "result.json").write_text(json.dumps({
            "world_size": world, "accelerate_processes": PartialState().num_processes,
            "checkpoint": ckpt, "steps": steps}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
