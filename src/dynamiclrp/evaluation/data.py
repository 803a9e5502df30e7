"""Evaluation data that ships offline (nothing is downloaded): photographs and their deterministic views, English
prose passages, and the synthetic ground-truth data sets (pattern images, key-value extractive QA).

Every generator is seeded explicitly (its own ``torch.Generator``), so a data set is the same on every run and on
every process of a sharded run.
"""
from __future__ import annotations

import re

import torch

#: RGB photographs bundled with scikit-image (no download), scikit-learn and matplotlib
IMAGE_SOURCES = (("skimage", "astronaut"), ("skimage", "chelsea"), ("skimage", "coffee"), ("skimage", "rocket"),
                 ("sklearn", "china.jpg"), ("sklearn", "flower.jpg"), ("matplotlib", "grace_hopper"))
#: crop scales (of the shorter side) and anchors of the deterministic views; each view also comes mirrored
VIEW_SCALES = (1.0, 0.8)
VIEW_ANCHORS = ((0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (0.0, 1.0))


def load_photos() -> dict:
    """``{name: HxWx3 uint8 array}`` for :data:`IMAGE_SOURCES`."""
    from .. import pretrained

    out = {}
    for source, name in IMAGE_SOURCES:
        if source == "sklearn":
            datasets = pretrained.require("sklearn.datasets", "scikit-learn", "vision")
            out[name.split(".")[0]] = datasets.load_sample_image(name)
        else:
            out.update(pretrained.photos([name]))
    return out


def photo_views(limit: int | None = None, size: int = 224) -> tuple[torch.Tensor, list[str]]:
    """Deterministic views of the bundled photos, normalised for ImageNet models: for each photo, square crops of
    :data:`VIEW_SCALES` of its shorter side at the :data:`VIEW_ANCHORS` (fractions of the free room), each also
    mirrored -- 16 views per photo, 112 in all. Returns ``([N, 3, size, size], names)`` ordered view-major (all
    photos' first view, then all second views...), so the first ``k`` views cover every photo."""
    from .. import pretrained

    photos = load_photos()
    per_photo = {}
    for name, img in photos.items():
        t = torch.from_numpy(img[..., :3].copy()).permute(2, 0, 1).float() / 255.0
        h, w = t.shape[-2:]
        views = []
        for scale in VIEW_SCALES:
            side = int(round(min(h, w) * scale))
            for ay, ax in VIEW_ANCHORS:
                top, left = int(round((h - side) * ay)), int(round((w - side) * ax))
                crop = t[:, top:top + side, left:left + side]
                for flip in (False, True):
                    v = crop.flip(-1) if flip else crop
                    views.append((f"{name}/s{scale}/a{ay},{ax}/{'flip' if flip else 'id'}",
                                  pretrained.preprocess_image(v, size)))
        per_photo[name] = views
    ordered = [v for i in range(len(next(iter(per_photo.values())))) for vs in per_photo.values() for v in [vs[i]]]
    if limit is not None:
        ordered = ordered[:limit]
    return torch.cat([x for _, x in ordered]), [n for n, _ in ordered]


def prose_paragraphs() -> list[tuple[str, str]]:
    """English prose shipped with every CPython: the language-reference topics of ``pydoc_data.topics`` (the
    text ``help()`` shows). Code blocks (indented), grammar rules and headings are dropped; what is left is the
    reference manual's running prose. Returns ``[(topic, paragraph)]``."""
    from pydoc_data.topics import topics

    out = []
    for topic in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[topic]):
            lines = para.split("\n")
            if not lines or lines[0].startswith((" ", "\t")) or "::=" in para or ">>>" in para:
                continue
            text = " ".join(line.strip() for line in lines)
            if set(text) <= set("*=-~^ ") or len(text) < 120 or not text.rstrip().endswith((".", ":")):
                continue
            letters = sum(c.isalpha() or c == " " for c in text) / len(text)
            if letters < 0.85:
                continue
            out.append((topic, text))
    return out


def prose_passages(tokenizer, n: int, length: int = 64) -> list[tuple[str, list[int]]]:
    """``n`` passages of exactly ``length`` tokens: the prose of each topic (see :func:`prose_paragraphs`) joined
    and cut into consecutive non-overlapping windows; one window per topic first, then second windows..., so
    passages come from as many topics as possible. Raises ``ValueError`` when there is not enough text."""
    streams: dict[str, list[int]] = {}
    for topic, text in prose_paragraphs():
        ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        streams.setdefault(topic, []).extend(ids)
    windows = [[(t, ids[i * length:(i + 1) * length]) for i in range(len(ids) // length)]
               for t, ids in streams.items()]
    out = []
    depth = max((len(w) for w in windows), default=0)
    for i in range(depth):
        out += [w[i] for w in windows if len(w) > i]
    if len(out) < n:
        raise ValueError(f"only {len(out)} prose passages of {length} tokens are available, {n} asked for")
    return out[:n]


# ------------------------------------------------------------------------------------------------ synthetic

PATTERN_SIZE = 5


def _patterns() -> torch.Tensor:
    """Four 5×5 binary patterns (one per class): a plus, a square ring, an X, a diagonal bar pair."""
    p = torch.zeros(4, PATTERN_SIZE, PATTERN_SIZE)
    p[0, 2, :] = p[0, :, 2] = 1
    p[1] = 1
    p[1, 1:4, 1:4] = 0
    idx = torch.arange(PATTERN_SIZE)
    p[2, idx, idx] = p[2, idx, PATTERN_SIZE - 1 - idx] = 1
    p[3, :, 0] = p[3, :, 4] = 1
    return p


def pattern_images(n: int, seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ground-truth image task: noise images ``[n, 3, size, size]`` in which a class pattern (4 classes, see
    :func:`_patterns`) is drawn in a random colour at a random place. Returns ``(images, labels, masks)`` with
    ``masks`` ``[n, size, size]`` true on the pattern's 5×5 box: the only evidence for the class."""
    g = torch.Generator().manual_seed(seed)
    pats = _patterns()
    x = 0.25 * torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    pos = torch.randint(0, size - PATTERN_SIZE + 1, (n, 2), generator=g)
    colour = 1.0 + torch.rand(n, 3, generator=g)
    for i in range(n):
        r, c = int(pos[i, 0]), int(pos[i, 1])
        p = pats[int(y[i])]
        box = x[i, :, r:r + PATTERN_SIZE, c:c + PATTERN_SIZE]
        x[i, :, r:r + PATTERN_SIZE, c:c + PATTERN_SIZE] = torch.where(p.bool(), colour[i].view(3, 1, 1), box)
        masks[i, r:r + PATTERN_SIZE, c:c + PATTERN_SIZE] = True
    return x, y, masks


#: token layout of the synthetic QA task
QA_KEYS = 4            # question keys 1..4
QA_PAD, QA_SEP = 0, 5  # special tokens
QA_FILLER = range(6, 30)   # context filler words
QA_VALUE_BASE = 30     # key k's answer words: 30 + 8k .. 30 + 8k + 7
QA_VOCAB = QA_VALUE_BASE + 8 * QA_KEYS


def qa_examples(n: int, seed: int, context: int = 24) -> dict[str, torch.Tensor]:
    """The synthetic extractive-QA task: ``[key, SEP, context...]`` where the context holds one answer span (2-4
    words) for every key, each from that key's own word set, among filler words; the answer is the span of the
    key asked in the question (token 0). Returns ``ids [n, 2 + context]``, ``spans [n, 2]`` (start, end
    inclusive, in sequence positions), ``question [n, T]`` (true on the question tokens)."""
    g = torch.Generator().manual_seed(seed)
    t = 2 + context
    ids = torch.empty(n, t, dtype=torch.long)
    spans = torch.empty(n, 2, dtype=torch.long)
    for i in range(n):
        key = int(torch.randint(0, QA_KEYS, (1,), generator=g))
        lengths = torch.randint(2, 5, (QA_KEYS,), generator=g).tolist()
        free = context - sum(lengths)
        # random interleaving: place spans in a random order separated by filler gaps
        order = torch.randperm(QA_KEYS, generator=g).tolist()
        cuts = sorted(torch.randint(0, free + 1, (QA_KEYS,), generator=g).tolist())
        gaps = [cuts[0]] + [cuts[j] - cuts[j - 1] for j in range(1, QA_KEYS)]
        seq = []
        for k, gap in zip(order, gaps):
            seq += (torch.randint(QA_FILLER.start, QA_FILLER.stop, (gap,), generator=g)).tolist()
            words = QA_VALUE_BASE + 8 * k + torch.randint(0, 8, (lengths[k],), generator=g)
            if k == key:
                spans[i] = torch.tensor([2 + len(seq), 2 + len(seq) + lengths[k] - 1])
            seq += words.tolist()
        seq += torch.randint(QA_FILLER.start, QA_FILLER.stop, (context - len(seq),), generator=g).tolist()
        ids[i] = torch.tensor([1 + key, QA_SEP] + seq)
    question = torch.zeros(n, t, dtype=torch.bool)
    question[:, :2] = True
    return {"ids": ids, "spans": spans, "question": question}
