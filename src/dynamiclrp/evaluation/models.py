"""Small models for the ground-truth tasks, trained in-repo on CPU with a fixed seed (seconds to a minute):
a CNN and a ViT for the pattern images, a transformer encoder for the synthetic extractive QA.

Plain PyTorch modules (attention written out as matrix products and a softmax), so every method -- dynamiclrp,
Captum, Zennit -- sees the same ordinary layers.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class PatternCNN(nn.Module):
    """conv 3→16 → ReLU → conv 16→32 → ReLU → max-pool 2 → conv 32→32 → ReLU → global max-pool → linear."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1))
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Block(nn.Module):
    """Pre-norm transformer block: multi-head self-attention and a GELU MLP, each with a residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class PatternViT(nn.Module):
    """A small ViT: 4×4 patches, a class token, learned positions, ``depth`` blocks, a linear head."""

    def __init__(self, size: int = 32, patch: int = 4, dim: int = 64, depth: int = 2, heads: int = 4,
                 classes: int = 4):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, (size // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.norm(self.blocks(t))[:, 0])


class QAEncoder(nn.Module):
    """A small transformer encoder with start/end heads: ``ids [B, T] -> logits [B, T, 2]``."""

    def __init__(self, vocab: int, length: int, dim: int = 64, depth: int = 2, heads: int = 4):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, length, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2)

    def embeddings(self, ids):
        return self.tok(ids)

    def forward(self, ids=None, inputs_embeds=None):
        h = self.tok(ids) if inputs_embeds is None else inputs_embeds
        return self.head(self.norm(self.blocks(h + self.pos)))


def train(model: nn.Module, inputs: torch.Tensor, loss_fn, *, epochs: int, batch: int = 64, lr: float = 3e-3,
          seed: int = 0) -> nn.Module:
    """Adam with a cosine schedule over ``epochs`` passes of shuffled mini-batches; ``loss_fn(model, index)``
    gives the loss of the examples ``index``. Seeded by its own generator; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = inputs.shape[0]
    steps = epochs * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            opt.zero_grad()
            loss_fn(model, perm[i:i + batch]).backward()
            opt.step()
            sched.step()
    return model.eval()


def train_pattern_model(kind: str, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> nn.Module:
    """A :class:`PatternCNN` (``kind="cnn"``) or :class:`PatternViT` (``"vit"``) trained on ``(x, y)``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = PatternCNN() if kind == "cnn" else PatternViT(size=x.shape[-1])
    lr = 3e-3 if kind == "cnn" else 2e-3
    return train(model, x, lambda m, i: nn.functional.cross_entropy(m(x[i]), y[i]), epochs=epochs, lr=lr,
                 seed=seed)


def train_qa_model(ids: torch.Tensor, spans: torch.Tensor, vocab: int, epochs: int, seed: int = 0) -> QAEncoder:
    """A :class:`QAEncoder` trained with cross-entropy on the start and end positions."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = QAEncoder(vocab, ids.shape[1])

    def loss(m, i):
        out = m(ids[i])
        return (nn.functional.cross_entropy(out[..., 0], spans[i, 0])
                + nn.functional.cross_entropy(out[..., 1], spans[i, 1]))

    return train(model, ids, loss, epochs=epochs, lr=5e-3, seed=seed)
