"""LatentRevise (arXiv 2606.29938): rescue zero-hit prompts by revising failed rollouts in latent space.

    core.py     the revision: Frank-Wolfe over the convex hull of the vocabulary embeddings (torch only,
                plus harness.config's dependency-free checks)
    mining.py   screen prompts, revise failed rollouts of zero-hit ones, continue, verify, log, statistics
    methods.py  `lr-sft` and `lr-grpo` (methods/registry.py imports it on first use)

This package's __init__ imports nothing, so `methods.latentrevise.core` loads without the harness's
database and grading dependencies (a GPU machine with only torch and transformers has neither).
"""
