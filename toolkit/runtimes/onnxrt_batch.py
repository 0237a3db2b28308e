"""Batched scoring for the onnxruntime runtime (see OrtSession.score_many): requests side by side along the
batch axis, padded on the right and masked.

(Tried and left out: rewriting the graph so the output projection, a fifth of SmolLM2-135M's work per token,
runs only at the rows read. Scoring got about a fifth faster, but the rewrite and a second session cost
3.8 s and a 2.9 GB peak per job for the 540 MB fp32 model: a loss for jobs of the evaluate stage's size.)
"""

from __future__ import annotations

import numpy as np


def padded_batches(lengths: list[int], budget: int, fixed: int = 0) -> list[list[int]]:
    """Consecutive indices (lengths sorted ascending) grouped so that rows x (fixed + longest) <= budget; a row
    longer than the budget goes alone."""
    batches, current = [], []
    for i, length in enumerate(lengths):
        if current and (len(current) + 1) * (fixed + length) > budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def score_many(session, groups: list[tuple[list[int], list[list[int]]]], budget: int) -> list[list[np.ndarray]]:
    """Rows of similar length share a forward pass: a group with at most one multi-token continuation is one row
    (context + that continuation); a group with several is one row for the context, then one row per
    continuation over a copy of that context's KV cache (the padded context leaves a masked hole before the
    continuation). With float activations the numbers are those of scoring alone to float rounding (7e-7 in
    the logits); int8-quantized activations (MatMulNBits at accuracy level 4) turn rounding into up to 1e-2,
    as they do between any two ways of running the same tokens (the unbatched `score` included)."""
    out: list[list[np.ndarray | None]] = [[None] * len(conts) for _, conts in groups]
    rows = []  # (group, tokens, continuations answered over this row's KV cache)
    for g, (context, conts) in enumerate(groups):
        if not context or any(not cont for cont in conts):
            raise ValueError("score_many needs a non-empty context and non-empty continuations")
        branching = [k for k, cont in enumerate(conts) if len(cont) > 1]
        body = conts[branching[0]][:-1] if len(branching) == 1 else []
        rows.append((g, list(context) + body, branching if len(branching) > 1 else []))
    rows.sort(key=lambda row: len(row[1]))
    for batch in padded_batches([len(row[1]) for row in rows], budget):
        _context_pass(session, [rows[i] for i in batch], groups, out, budget)
    return out


def _context_pass(session, rows, groups, out, budget: int) -> None:
    n_vocab = session.n_vocab
    lengths = np.array([len(tokens) for _, tokens, _ in rows], dtype=np.int64)
    width = int(lengths.max())
    ids = np.zeros((len(rows), width), dtype=np.int64)
    for r, (_, tokens, _) in enumerate(rows):
        ids[r, :len(tokens)] = tokens
        ids[r, len(tokens):] = tokens[-1]  # padding: any valid id, masked out
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    first, count = [], []  # per row: the first position read and how many
    for r, (g, tokens, _) in enumerate(rows):
        c = len(groups[g][0])
        first.append(r * width + c - 1)
        count.append(len(tokens) - c + 1)
    want = np.concatenate([np.arange(f, f + n) for f, n in zip(first, count, strict=True)])
    logits, present = session.forward(ids, mask, session.empty_past(len(rows)), np.zeros(len(rows), dtype=np.int64), want)
    branches, offset = [], 0  # (row, group, continuation) answered over this row's KV cache
    for r, (g, _, branching) in enumerate(rows):
        for k, cont in enumerate(groups[g][1]):
            dest = out[g][k] = np.empty((len(cont), n_vocab), dtype=np.float32)
            if len(cont) > 1 and not branching:  # the row holds this continuation's body
                dest[:] = logits[offset:offset + len(cont)]
            else:
                dest[0] = logits[offset]
        offset += count[r]
        branches += [(r, g, k) for k in branching]
    if not branches:
        return
    bodies = [len(groups[g][1][k]) - 1 for _, g, k in branches]
    order = sorted(range(len(branches)), key=lambda i: bodies[i])
    for batch in padded_batches([bodies[i] for i in order], budget, fixed=width):
        _branch_pass(session, [branches[order[i]] for i in batch], groups, out, present, mask, lengths)


def _branch_pass(session, picked, groups, out, present, mask, lengths) -> None:
    """Continuations over copies of their contexts' KV caches (a branching row holds its context only)."""
    source = np.array([r for r, _, _ in picked], dtype=np.int64)
    bodies = [groups[g][1][k][:-1] for _, g, k in picked]
    width = max(len(body) for body in bodies)
    ids = np.zeros((len(picked), width), dtype=np.int64)
    for i, body in enumerate(bodies):
        ids[i, :len(body)] = body
        ids[i, len(body):] = body[-1]
    new = (np.arange(width)[None, :] < np.array([len(b) for b in bodies])[:, None]).astype(np.int64)
    past = {name: np.take(value, source, axis=0) for name, value in present.items()}
    want = np.concatenate([np.arange(i * width, i * width + len(body)) for i, body in enumerate(bodies)])
    logits, _ = session.forward(ids, np.concatenate([mask[source], new], axis=1), past, lengths[source], want)
    offset = 0
    for (_, g, k), body in zip(picked, bodies, strict=True):
        out[g][k][1:] = logits[offset:offset + len(body)]
        offset += len(body)
