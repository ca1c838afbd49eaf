"""The README's "add your own method" example, kept runnable (tests/test_byom.py and test_third_party.py run it).

    python reproduce.py train best-of-n --method-file examples/best_of_n.py --preset tiny-smoke
    python reproduce.py --table main --preset tiny-smoke --method-file examples/best_of_n.py --with best-of-n
"""

from dataclasses import dataclass

from harness.generation import Sampling
from harness.method import RunContext
from harness.prompts import render
from methods import register_method
from methods.sft import SFT, SFTConfig


@dataclass
class BestOfNConfig(SFTConfig):      # reuse SFT's knobs, add ours
    samples: int = 8
    max_new_tokens: int = 1024

@register_method                      # or: [project.entry-points."latentrevise.methods"] best-of-n = "pkg.mod:BestOfN"
class BestOfN(SFT):
    """Rejection sampling: fine-tune on the base model's own correct samples."""
    name = "best-of-n"
    config_cls = BestOfNConfig
    family = "sft"                    # SFT-like: starts from the preset's sft budget, compared with lr-sft
    preset_overrides = {"tiny": {"samples": 4, "max_new_tokens": 96},  # the tiny protocol's 96 tokens
                        "tiny-smoke": {"samples": 2, "max_new_tokens": 96}}

    def extra_examples(self, base_model, prompts, cfg, ctx: RunContext):
        gen = ctx.make_generator(base_model)
        texts = [render(ctx.template, p.problem, gen.tokenizer) for p in prompts]
        sampling = Sampling(n=cfg.samples, temperature=1.0, max_tokens=cfg.max_new_tokens, seed=ctx.seed)
        outs = gen.generate(texts, sampling)
        pairs = [(t, c.text, p.answer) for t, p, cs in zip(texts, prompts, outs) for c in cs]
        verdicts = ctx.grader.grade([(c, gold) for _, c, gold in pairs])
        ctx.log_step(0, phase="best-of-n", reward_mean=sum(v.correct for v in verdicts) / len(verdicts))
        gen.close()
        return [(t, c) for (t, c, _), v in zip(pairs, verdicts) if v.correct]
