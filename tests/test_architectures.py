"""Real architectures run end to end with random weights built offline: finite relevance, no unsupported node,
every node propagated once (the engine raises otherwise), and attention masks handled as the model used them."""
import pytest
import torch
import torchvision
import transformers

from dynamiclrp import LRP


def _check(expl, x_shape):
    rel = expl.relevance[0]
    assert rel.shape == x_shape
    assert torch.isfinite(rel).all()
    assert rel.abs().sum() > 0


@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_torchvision_cnn(name):
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(1, 3, 64, 64)
    expl = LRP(model).explain(x)
    _check(expl, x.shape)
    if name == "resnet50":
        assert expl.stats["promises"] >= 16  # one per residual add


def test_vit():
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=10).eval()
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision zero-initialises the head
    x = torch.randn(2, 3, 32, 32)
    expl = LRP(model).explain(x, target=[3, 7])
    _check(expl, x.shape)
    assert expl.stats["promises"] > 0


def _gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _bert():
    cfg = transformers.BertConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=32,
                                  intermediate_size=64, vocab_size=100, max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(cfg).eval()


def test_gpt2_is_causal():
    ids = torch.randint(0, 100, (2, 9))
    expl = LRP(_gpt2()).explain(ids, target=[(4, 11), (4, 12)])
    rel = expl.relevance[0]
    assert rel.shape == ids.shape and torch.isfinite(rel).all()
    assert expl.embedding_relevance[0].shape == (2, 9, 32)
    assert torch.allclose(expl.embedding_relevance[0].sum(-1), rel)
    assert rel[:, :5].abs().sum() > 0
    assert torch.equal(rel[:, 5:], torch.zeros_like(rel[:, 5:])), "tokens after the target position got relevance"


def test_bert_is_not_causal():
    # An encoder attends both ways: later tokens must receive relevance (the paper's code masks them).
    ids = torch.randint(0, 100, (2, 9))
    expl = LRP(_bert()).explain(ids, target=1, attention_mask=torch.ones_like(ids))
    rel = expl.relevance[0]
    assert rel.shape == ids.shape and torch.isfinite(rel).all()
    assert (rel[:, 1:].abs() > 0).all()


def test_bert_padding_mask_gives_padding_no_relevance():
    ids = torch.randint(1, 100, (1, 8))
    mask = torch.ones_like(ids)
    mask[:, 6:] = 0
    expl = LRP(_bert()).explain(ids, target=0, attention_mask=mask)
    rel = expl.relevance[0]
    assert torch.isfinite(rel).all()
    assert rel[:, :6].abs().sum() > 0
    # the [CLS] output never sees padded positions, so they get exactly nothing
    assert torch.equal(rel[:, 6:], torch.zeros_like(rel[:, 6:]))
