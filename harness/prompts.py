"""Prompt templates by name: how a problem becomes the text a model continues, where it stops, what is scored.

Each evaluation stores its template name (and the stop sequences go into its sampling), so a
number in results.db always says which prompt produced it. A template named after a source
renders that source's text byte for byte (tests/test_prompts.py holds the literal strings):

    qwen-boxed       QwenLM/Qwen2.5-Math evaluation/utils.py PROMPT_TEMPLATES["qwen-boxed"]: "You are a
                     helpful assistant." system turn, the problem then "Please reason step by step, and put
                     your final answer within \\boxed{}." in the user turn (used by SimpleRL-Zoo).
    qwen25-math-cot  same file, PROMPT_TEMPLATES["qwen25-math-cot"]: that instruction as the system turn, the
                     problem alone as the user turn (= understand-r1-zero's `qwen_math`).
    r1               sail-sg/understand-r1-zero evaluate_model.py `apply_r1_template`: R1-Zero plain-text
                     conversation ending in "<think>"; stops at "</answer>" (kept in the output) and only the
                     `<answer>` tag of a "</think> <answer> ... </answer>" completion is scored.
    plain            ours: "Problem:\\n{problem}\\n\\nSolution:" (no chat markup, no few-shot examples).
    chat-template    ours: the tokenizer's own chat template with the problem as the only (user) message.
    tiny-boxed       ours, FIXED contract with the tiny preset's pretrained model: exactly
                     "Problem: {problem}\\nSolution:"; the model writes a worked solution ending in
                     \\boxed{answer} and then eos `<|im_end|>`, where the engine stops by itself.

The Qwen templates are rendered as their literal ChatML text, never through a tokenizer's chat
template, as Qwen's own evaluation does without `--apply_chat_template`: on a Qwen tokenizer the two
are the same string, on any other model the chat template would silently change the prompt.

Stops are strings here; the generator turns those that are special tokens of the model's tokenizer
(`<|im_end|>`, `<|endoftext|>`) into stop token ids (harness/generation.py `split_stops`), because an
engine checks stop strings against text from which special tokens are left out.

Problems contain braces (LaTeX), so templates substitute with `str.replace`, never `str.format`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

QWEN_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# QwenLM/Qwen2.5-Math @a45202bd16f1ec06f433442dc1152d0074773465 evaluation/math_eval.py: stop_words
# (vLLM is also given stop_token_ids [151645, 151643] = <|im_end|>, <|endoftext|> for qwen2 models)
QWEN_STOP = ("</s>", "<|im_end|>", "<|endoftext|>")
# sail-sg/understand-r1-zero @dfca49dd460ee7cc8e4a5a162c876a7fd6993b87 evaluate_model.py apply_r1_template
R1_PREFIX = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with the "
    "answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer "
    "here </answer>.\nUser: "
)

Scoring = Literal["whole", "answer-tag"]


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    literal: str | None  # text with a "{problem}" slot, used when the chat template is not used
    stop: tuple[str, ...] = ()
    system: str | None = None  # chat mode: the system message (None: user message only)
    user: str = "{problem}"  # chat mode: the user message
    chat: str = "never"  # never | prefer (chat template if the tokenizer has one) | require
    include_stop: bool = False  # keep the matched stop string at the end of the completion
    scoring: Scoring = "whole"  # what of a completion the grader sees (see `scored_text`)
    source: str = "ours"  # repo @commit path of the text, or "ours"

    def render(self, problem_text: str, tokenizer=None) -> str:
        if self.chat != "never" and getattr(tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": self.system}] if self.system is not None else []
            messages.append({"role": "user", "content": self.user.replace("{problem}", problem_text)})
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.chat == "require" or self.literal is None:
            raise ValueError(f"template {self.name!r} needs a tokenizer with a chat template"
                             f"{'' if tokenizer is None else f' ({type(tokenizer).__name__} has none)'}")
        return self.literal.replace("{problem}", problem_text)

    def scored_text(self, completion: str) -> str:
        """The part of `completion` the grader scores.

        "answer-tag" follows understand-r1-zero's `answer_tag_reward_fn` (understand_r1_zero/math_grader.py):
        a completion without both "</think> <answer>" and "</answer>" is unformatted and scores nothing
        (""); else the text after the last "<answer>", "</answer>" removed. A bare answer is boxed so that
        our grader, which reads the last \\boxed{}, grades it; an answer that has a box keeps it.
        """
        if self.scoring == "whole":
            return completion
        if "</think> <answer>" not in completion or "</answer>" not in completion:
            return ""
        answer = completion.split("<answer>")[-1].replace("</answer>", "")
        return answer if "\\boxed" in answer else "\\boxed{" + answer.strip() + "}"


def _chatml(system: str, user: str) -> str:
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


_QWEN_SRC = "QwenLM/Qwen2.5-Math @a45202bd16f1ec06f433442dc1152d0074773465 evaluation/utils.py PROMPT_TEMPLATES"
TEMPLATES: dict[str, Template] = {t.name: t for t in (
    # PROMPT_TEMPLATES["qwen-boxed"][0] with {input} = the problem (its "{{}}" is str.format's "{}")
    Template("qwen-boxed", "Qwen2.5-Math eval 'qwen-boxed': helpful-assistant system turn, instruction after the "
             "problem", literal=_chatml("You are a helpful assistant.", "{problem}\n" + QWEN_MATH_INSTRUCTION),
             stop=QWEN_STOP, source=_QWEN_SRC + '["qwen-boxed"]'),
    # PROMPT_TEMPLATES["qwen25-math-cot"][0]
    Template("qwen25-math-cot", "Qwen2.5-Math eval 'qwen25-math-cot': the instruction as the system turn",
             literal=_chatml(QWEN_MATH_INSTRUCTION, "{problem}"), stop=QWEN_STOP,
             source=_QWEN_SRC + '["qwen25-math-cot"]'),
    # apply_r1_template; evaluate_model.py sets stop=["</answer>"], include_stop_str_in_output=True and
    # scores with answer_tag_reward_fn
    Template("r1", "understand-r1-zero 'r1': R1-Zero conversation ending in <think>, <answer> tag scored",
             literal=R1_PREFIX + "{problem}\nAssistant: <think>", stop=("</answer>",), include_stop=True,
             scoring="answer-tag",
             source="sail-sg/understand-r1-zero @dfca49dd460ee7cc8e4a5a162c876a7fd6993b87 evaluate_model.py"),
    Template("plain", "Problem:/Solution: without chat markup or few-shot examples",
             literal="Problem:\n{problem}\n\nSolution:", stop=("\n\nProblem:",)),
    Template("chat-template", "the tokenizer's own chat template, user message only",
             literal=None, chat="require"),
    Template("tiny-boxed", "tiny preset contract: 'Problem: ...\\nSolution:', stops at eos",
             literal="Problem: {problem}\nSolution:"),
)}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise KeyError(f"unknown template {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def render(name: str, problem_text: str, tokenizer=None) -> str:
    """The prompt for `problem_text` under template `name` (chat templates need `tokenizer`)."""
    return get_template(name).render(problem_text, tokenizer)


def stop_sequences(name: str) -> tuple[str, ...]:
    return get_template(name).stop


def list_templates() -> list[str]:
    return list(TEMPLATES)
