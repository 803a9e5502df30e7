"""Which prompt tokens made a language model predict its next token? SmolLM2-135M (real weights, offline), AttnLRP.

    python examples/llm_next_token.py    # prints coloured tokens, writes outputs/examples/next_token.html
"""
import os

from dynamiclrp import LRPConfig, pretrained, viz
from dynamiclrp.hf import explain_next_token

model, tokenizer = pretrained.smollm2()                        # de-quantised once, then cached
result = explain_next_token(model, tokenizer, "The capital of France is", config=LRPConfig.attnlrp())
print(result.label)
viz.print_tokens(result.tokens, result.relevance.tolist())    # coloured in a terminal, token[value] otherwise

# a contrast: why " Paris" rather than " Lyon"?
contrast = explain_next_token(model, tokenizer, "The capital of France is", target="Paris", contrast="Lyon")
viz.print_tokens(contrast.tokens, contrast.relevance.tolist())

out = os.environ.get("DYNAMICLRP_EXAMPLES_OUT", "outputs/examples")
os.makedirs(out, exist_ok=True)
rows = [(r.label, r.tokens, r.relevance.tolist()) for r in (result, contrast)]
with open(f"{out}/next_token.html", "w", encoding="utf-8") as f:
    f.write(viz.token_html_document(rows))
print(f"wrote {out}/next_token.html")
