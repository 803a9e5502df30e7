"""Hugging Face helpers on tiny random models with an in-memory word-level tokenizer (no files, no downloads)."""
import pytest
import torch

from dynamiclrp import LRP, LRPConfig
from dynamiclrp.hf import (
    contrastive_mask,
    explain_classification,
    explain_generation,
    explain_next_token,
    explain_qa,
)

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "who", "where", "is", "a", "dog",
         "red", "blue", "big", "small", "ran", "to"]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]")


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(WORDS), n_embd=16, n_layer=2, n_head=2, n_positions=32)
    return GPT2LMHeadModel(cfg).eval()


def test_next_token_equals_lrp_on_the_same_target(tokenizer):
    model = _gpt2()
    result = explain_next_token(model, tokenizer, "the cat sat on the")
    ids = tokenizer("the cat sat on the", return_tensors="pt").input_ids
    logits = model(ids).logits
    tok = int(logits[0, -1].argmax())
    ref = LRP(model, LRPConfig.attnlrp()).explain(ids, target=(ids.shape[1] - 1, tok)).relevance[0][0]
    torch.testing.assert_close(result.relevance, ref)
    assert [t.strip() for t in result.tokens] == ["the", "cat", "sat", "on", "the"]
    assert repr(tokenizer.decode([tok])) in result.label
    assert result.score == pytest.approx(float(logits[0, -1, tok]), rel=1e-5)
    assert "<span" in result.html() and result._repr_html_().startswith("<div><b>next token")


def test_contrastive_target_is_the_difference_of_two_explanations(tokenizer):
    """LRP is linear in the seed for a fixed graph, so explaining A - B equals R(A) - R(B)."""
    model = _gpt2()
    lrp = LRP(model, LRPConfig.attnlrp())
    a = explain_next_token(model, tokenizer, "the cat sat", target="mat", lrp=lrp)
    b = explain_next_token(model, tokenizer, "the cat sat", target="dog", lrp=lrp)
    both = explain_next_token(model, tokenizer, "the cat sat", target="mat", contrast="dog", lrp=lrp)
    torch.testing.assert_close(both.relevance, a.relevance - b.relevance, rtol=1e-4, atol=1e-6)
    assert "rather than" in both.label
    mask = contrastive_mask(torch.zeros(1, 3, 5), 1, 4)
    assert mask[0, 2, 1] == 1 and mask[0, 2, 4] == -1 and mask.abs().sum() == 2


def test_generation_explains_each_generated_token(tokenizer):
    model = _gpt2()
    steps = explain_generation(model, tokenizer, "the cat", max_new_tokens=3, pad_token_id=0)
    ids = tokenizer("the cat", return_tensors="pt").input_ids
    full = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert len(steps) == 3
    for k, step in enumerate(steps):
        assert step.ids.tolist() == full[0, :ids.shape[1] + k].tolist()  # the context the token came from
        assert step.label.startswith(f"next token {tokenizer.decode([int(full[0, ids.shape[1] + k])])!r}")
        assert torch.isfinite(step.relevance).all() and step.relevance.abs().sum() > 0


def test_generation_in_one_forward_equals_explaining_each_prefix(tokenizer):
    """explain_generation runs one forward over the generated sequence (one seed per token, LRP.explain_targets);
    in a causal model that equals the former implementation, one explain_next_token per prefix."""
    model = _gpt2().double()
    steps = explain_generation(model, tokenizer, "the cat", max_new_tokens=4, pad_token_id=0)
    ids = tokenizer("the cat", return_tensors="pt").input_ids
    full = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    lrp = LRP(model, LRPConfig.attnlrp())
    assert len(steps) == 4
    for k, step in enumerate(steps):
        p = ids.shape[1] + k
        ref = explain_next_token(model, tokenizer, full[:, :p], target=int(full[0, p]), lrp=lrp)
        assert step.ids.tolist() == ref.ids.tolist() and step.label == ref.label
        torch.testing.assert_close(step.relevance, ref.relevance, rtol=1e-10, atol=1e-12)
        assert step.score == pytest.approx(ref.score, rel=1e-10)
        later = step.explanation.relevance[0][0, p:]  # tokens after the explained position: causal, no relevance
        assert later.abs().max() <= 1e-12 * step.relevance.abs().max()


def test_classification_and_label_names(tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"},
                     label2id={"neg": 0, "neu": 1, "pos": 2})
    model = BertForSequenceClassification(cfg).eval()
    r = explain_classification(model, tokenizer, "the big dog ran", target="pos")
    assert r.label == "class 2 (pos)"
    ids = tokenizer("the big dog ran", return_tensors="pt").input_ids
    ref = LRP(model, LRPConfig.attnlrp()).explain(ids, target=2).relevance[0][0]
    torch.testing.assert_close(r.relevance, ref)
    with pytest.raises(Exception, match="no label"):
        explain_classification(model, tokenizer, "the dog", target="nope")


def test_question_answering_start_and_end(tokenizer):
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32)
    model = BertForQuestionAnswering(cfg).eval()
    qa = explain_qa(model, tokenizer, "where is the cat", "the cat sat on a red mat")
    i, j = qa.span
    assert i <= j
    enc = tokenizer("where is the cat", "the cat sat on a red mat", return_tensors="pt")
    out = model(**enc)
    assert qa.start.score == pytest.approx(float(out.start_logits[0, i]), rel=1e-5)
    assert qa.end.score == pytest.approx(float(out.end_logits[0, j]), rel=1e-5)
    assert len(qa.start.tokens) == enc.input_ids.shape[1]
    assert torch.isfinite(qa.start.relevance).all() and torch.isfinite(qa.end.relevance).all()
