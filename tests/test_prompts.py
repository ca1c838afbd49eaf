"""Prompt templates: exact strings for the literal ones, the chat-template path, stop sequences."""

from __future__ import annotations

import pytest

from harness.prompts import TEMPLATES, list_templates, render, stop_sequences

PROBLEM = "What is $\\frac{1}{2} + {x}$ when $x = 1$?"  # braces must survive rendering


class NoChat:
    chat_template = None


def test_registry_names():
    assert list_templates() == ["qwen-boxed", "qwen-math-cot", "r1-think", "plain", "chat-template", "tiny-boxed"]
    assert set(TEMPLATES) == set(list_templates())


def test_tiny_boxed_is_the_fixed_contract(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)  # has a chat template: must be ignored
    expected = f"Problem: {PROBLEM}\nSolution:"
    assert render("tiny-boxed", PROBLEM) == expected
    assert render("tiny-boxed", PROBLEM, tok) == expected
    assert stop_sequences("tiny-boxed") == ()


def test_qwen_boxed_literal_without_chat_template():
    expected = ("<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}."
                "<|im_end|>\n<|im_start|>user\n" + PROBLEM + "<|im_end|>\n<|im_start|>assistant\n")
    assert render("qwen-boxed", PROBLEM) == expected
    assert render("qwen-boxed", PROBLEM, NoChat()) == expected
    assert stop_sequences("qwen-boxed") == ("<|im_end|>", "<|endoftext|>")


def test_qwen_math_cot_literal():
    expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + PROBLEM
                + "\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert render("qwen-math-cot", PROBLEM) == expected


def test_qwen_boxed_uses_the_tokenizers_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}[assistant]{% endif %}")
    assert render("qwen-boxed", PROBLEM, tok) == (
        "[system]Please reason step by step, and put your final answer within \\boxed{}.[user]" + PROBLEM + "[assistant]")
    assert render("chat-template", PROBLEM, tok) == f"[user]{PROBLEM}[assistant]"


def test_qwen_boxed_chat_template_equals_literal_for_qwen_style_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)  # tiny models carry the Qwen chat format
    assert render("qwen-boxed", PROBLEM, tok) == render("qwen-boxed", PROBLEM)


def test_r1_think_ends_in_think():
    text = render("r1-think", PROBLEM)
    assert text.startswith("A conversation between User and Assistant.")
    assert "first thinks about the reasoning process in the mind and then provides the User with the answer" in text
    assert "<think> </think>" in text
    assert text.endswith(f"\nUser: {PROBLEM}\nAssistant: <think>")
    assert stop_sequences("r1-think") == ("</answer>",)


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
