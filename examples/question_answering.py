"""Extractive question answering: explain the start and the end of the predicted answer span.

No QA model ships offline, so this builds a tiny BERT with random weights and a word-level tokenizer: the call is
the same for any ``...ForQuestionAnswering`` model and its tokenizer (``transformers.AutoModelForQuestionAnswering``).

    python examples/question_answering.py
"""
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertForQuestionAnswering, PreTrainedTokenizerFast

from dynamiclrp import viz
from dynamiclrp.hf import explain_qa

words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "where", "is", "the", "cat", "sat", "on", "a", "red", "mat"]
tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.post_processor = processors.TemplateProcessing(single="$A", pair="[CLS] $A [SEP] $B [SEP]",
                                                   special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")

torch.manual_seed(0)
model = BertForQuestionAnswering(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64)).eval()

qa = explain_qa(model, tokenizer, "where is the cat", "the cat sat on a red mat")
print(f"answer: {qa.answer!r} (tokens {qa.span})")
for part in (qa.start, qa.end):
    print(part.label)
    viz.print_tokens(part.tokens, part.relevance.tolist())
