"""Prompt templates by name: how a problem becomes the text a model continues, and where it stops.

Each evaluation stores its template name (and the stop sequences go into its sampling), so a
number in results.db always says which prompt produced it. Templates:

    qwen-boxed     Qwen2.5-Math system prompt ("Please reason step by step, and put your final answer
                   within \\boxed{}.") + the problem as the user turn; the tokenizer's chat template when
                   it has one, else the literal Qwen `<|im_start|>` format.
    qwen-math-cot  "You are a helpful assistant." system prompt, the instruction after the problem in the
                   user turn (the `qwen-boxed` prompt of the Qwen2.5-Math evaluation repo, used by
                   SimpleRL-Zoo); chat template when available, else literal.
    r1-think       DeepSeek-R1-Zero style plain-text conversation; the prompt ends in "<think>".
    plain          "Problem:\\n{problem}\\n\\nSolution:" (no chat markup, no few-shot examples).
    chat-template  the tokenizer's own chat template with the problem as the only (user) message.
    tiny-boxed     FIXED contract with the tiny preset's pretrained model: exactly
                   "Problem: {problem}\\nSolution:"; the model writes a worked solution ending in
                   \\boxed{answer} and then eos `<|im_end|>`, where vLLM stops by itself (no stop strings).

Problems contain braces (LaTeX), so templates substitute with `str.replace`, never `str.format`.
"""

from __future__ import annotations

from dataclasses import dataclass

QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
R1_PREAMBLE = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with "
    "the answer. The reasoning process is enclosed within <think> </think> and the answer within "
    "<answer> </answer> tags, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>. Put the final answer within \\boxed{}."
)
QWEN_STOP = ("<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    literal: str | None  # text with a "{problem}" slot, used when the chat template is not used
    stop: tuple[str, ...] = ()
    system: str | None = None  # chat mode: the system message (None: user message only)
    user: str = "{problem}"  # chat mode: the user message
    chat: str = "never"  # never | prefer (chat template if the tokenizer has one) | require

    def render(self, problem_text: str, tokenizer=None) -> str:
        if self.chat != "never" and getattr(tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": self.system}] if self.system is not None else []
            messages.append({"role": "user", "content": self.user.replace("{problem}", problem_text)})
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.chat == "require" or self.literal is None:
            raise ValueError(f"template {self.name!r} needs a tokenizer with a chat template"
                             f"{'' if tokenizer is None else f' ({type(tokenizer).__name__} has none)'}")
        return self.literal.replace("{problem}", problem_text)


def _qwen_literal(system: str, user: str) -> str:
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


TEMPLATES: dict[str, Template] = {t.name: t for t in (
    Template("qwen-boxed", "Qwen2.5-Math system prompt, boxed answer (chat format)",
             literal=_qwen_literal(QWEN_MATH_SYSTEM, "{problem}"), stop=QWEN_STOP,
             system=QWEN_MATH_SYSTEM, chat="prefer"),
    Template("qwen-math-cot", "helpful-assistant system prompt, step-by-step instruction after the problem",
             literal=_qwen_literal("You are a helpful assistant.", "{problem}\n" + QWEN_MATH_SYSTEM),
             stop=QWEN_STOP, system="You are a helpful assistant.", user="{problem}\n" + QWEN_MATH_SYSTEM,
             chat="prefer"),
    Template("r1-think", "R1-Zero style conversation, prompt ends in <think>",
             literal=R1_PREAMBLE + "\nUser: {problem}\nAssistant: <think>", stop=("</answer>",)),
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
