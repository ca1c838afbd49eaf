"""Prompt templates: the sources' texts byte for byte, the chat-template path, stop sequences, scored text."""

from __future__ import annotations

import pytest

from harness.prompts import TEMPLATES, get_template, list_templates, render, stop_sequences

PROBLEM = "What is $\\frac{1}{2} + {x}$ when $x = 1$?"  # braces must survive rendering


class NoChat:
    chat_template = None


def test_registry_names():
    assert list_templates() == ["qwen-boxed", "qwen25-math-cot", "r1", "plain", "chat-template", "tiny-boxed"]
    assert set(TEMPLATES) == set(list_templates())


def test_tiny_boxed_is_the_fixed_contract(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)  # has a chat template: must be ignored
    expected = f"Problem: {PROBLEM}\nSolution:"
    assert render("tiny-boxed", PROBLEM) == expected
    assert render("tiny-boxed", PROBLEM, tok) == expected
    assert stop_sequences("tiny-boxed") == ()


# Copied byte for byte from QwenLM/Qwen2.5-Math @a45202bd16f1ec06f433442dc1152d0074773465
# evaluation/utils.py PROMPT_TEMPLATES (the input template, element 0); rendered there by
# construct_prompt as `input_template.format(input=example["question"])` ... `.strip(" ")` (zero-shot).
QWEN_SOURCE = {
    "qwen-boxed": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n{input}\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"  # noqa: E501
        "<|im_start|>assistant\n"
    ),
    "qwen25-math-cot": (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
        "<|im_start|>user\n{input}<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
}


@pytest.mark.parametrize("name", sorted(QWEN_SOURCE))
def test_qwen_templates_are_the_sources_text(name, tiny_model_dir):
    from transformers import AutoTokenizer

    expected = QWEN_SOURCE[name].format(input=PROBLEM).strip(" ")
    assert render(name, PROBLEM) == expected
    assert render(name, PROBLEM, NoChat()) == expected
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"  # never used for these
    assert render(name, PROBLEM, tok) == expected
    # math_eval.py stop_words; the special ones become stop token ids in the generator
    assert stop_sequences(name) == ("</s>", "<|im_end|>", "<|endoftext|>")
    assert "QwenLM/Qwen2.5-Math" in get_template(name).source and name in get_template(name).source


def test_qwen_boxed_is_not_the_system_prompt_one():
    """The swap of the old code: `qwen-boxed` held qwen25-math-cot's text."""
    assert render("qwen-boxed", PROBLEM).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert render("qwen25-math-cot", PROBLEM).startswith(
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>")


# Copied byte for byte from sail-sg/understand-r1-zero @dfca49dd460ee7cc8e4a5a162c876a7fd6993b87
# evaluate_model.py apply_r1_template (identical in train_zero_math.py).
def _source_apply_r1_template(question: str):
    return (
        "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. The Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. "  # noqa: E501
        "The reasoning process is enclosed within <think> </think> and answer is enclosed within <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.\nUser: "  # noqa: E501
        + question
        + "\nAssistant: <think>"
    )


def test_r1_is_understand_r1_zeros_template():
    t = get_template("r1")
    assert render("r1", PROBLEM) == _source_apply_r1_template(PROBLEM)
    # evaluate_model.py: sampling_params.stop = ["</answer>"]; include_stop_str_in_output = True
    assert t.stop == ("</answer>",) and t.include_stop
    assert "sail-sg/understand-r1-zero" in t.source


@pytest.mark.parametrize("completion, scored", [
    # answer_tag_reward_fn: "</think> <answer>" and "</answer>" required, text after the last <answer>
    (" 2+3 is 5 </think> <answer> 5 </answer>", "\\boxed{5}"),
    (" so </think> <answer> The answer is \\boxed{\\frac{1}{2}} </answer>", " The answer is \\boxed{\\frac{1}{2}} "),
    (" first \\boxed{4} </think> <answer> 7 </answer>", "\\boxed{7}"),  # the box in the thinking is not scored
    (" no tag, \\boxed{5}", ""),  # unformatted: nothing scored
    (" </think><answer> 5 </answer>", ""),  # no space between the tags: unformatted there too
    (" </think> <answer> 5", ""),  # no closing tag (ran out of tokens)
])
def test_r1_scores_the_answer_tag_only(completion, scored):
    assert get_template("r1").scored_text(completion) == scored
    assert get_template("qwen-boxed").scored_text(completion) == completion


def test_plain():
    assert render("plain", PROBLEM) == f"Problem:\n{PROBLEM}\n\nSolution:"
    assert stop_sequences("plain") == ("\n\nProblem:",)


def test_chat_template_requires_one():
    with pytest.raises(ValueError, match="chat template"):
        render("chat-template", PROBLEM)
    with pytest.raises(ValueError, match="chat template"):
        render("chat-template", PROBLEM, NoChat())


def test_unknown_template():
    with pytest.raises(KeyError, match="unknown template 'nope'"):
        render("nope", PROBLEM)
    with pytest.raises(KeyError):
        stop_sequences("nope")


def test_chat_template_path(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}[assistant]{% endif %}")
    assert render("chat-template", PROBLEM, tok) == f"[user]{PROBLEM}[assistant]"
