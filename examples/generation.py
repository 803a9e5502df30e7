"""Explain every token of a generate() call: one explanation per generated token (SmolLM2-135M, offline).

    python examples/generation.py
"""
from dynamiclrp import pretrained, viz
from dynamiclrp.hf import explain_generation

model, tokenizer = pretrained.smollm2()
steps = explain_generation(model, tokenizer, "Water boils at", max_new_tokens=4)
for step in steps:
    print(step.label)
    viz.print_tokens(step.tokens, step.relevance.tolist())
assert len(steps) == 4
