"""Batched scoring for the llama.cpp runtime: packing (context, continuations) groups into decodes, and one
decode of a packed round (see LlamaCppSession.score_many)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Unit:
    """Part of one group decoded together: the context once, then the named continuations' tokens."""

    group: int
    conts: list[int]
    cells: int  # KV cells (= batch tokens): the context plus every continuation but its last token
    seqs: int  # sequence ids: one per continuation with tokens to decode, at least one
    outputs: int  # logit rows: the context's last token, then every continuation token decoded


def plan_units(groups, capacity: int, max_seqs: int) -> list[Unit]:
    """Each group as one unit, or split into several (each re-decoding the context) when its continuations
    together exceed the KV capacity or the sequence limit."""
    units = []
    for g, (context, conts) in enumerate(groups):
        if not context:
            raise ValueError("score_many needs a non-empty context (a BOS token at least)")
        current, cells, seqs = [], len(context), 0
        for k, cont in enumerate(conts):
            if not cont:
                raise ValueError("score_many needs non-empty continuations")
            extra = len(cont) - 1
            if len(context) + extra > capacity:
                raise ValueError(f"context + continuation ({len(context) + extra} tokens) exceed the scoring context ({capacity})")
            if current and (cells + extra > capacity or seqs + (extra > 0) > max_seqs):
                units.append(Unit(g, current, cells, max(seqs, 1), cells - len(context) + 1))
                current, cells, seqs = [], len(context), 0
            current.append(k)
            cells += extra
            seqs += extra > 0
        if current:
            units.append(Unit(g, current, cells, max(seqs, 1), cells - len(context) + 1))
    return units


def aligned(n: int, align: int) -> int:
    return -(-n // align) * align


def plan_rounds(units: list[Unit], budget: int, max_seqs: int, max_outputs: int, align: int = 1) -> list[list[Unit]]:
    """Consecutive units packed into decodes of at most `budget` tokens (each unit's cells rounded up to
    `align`, where the next one starts), `max_seqs` sequences and `max_outputs` logit rows (a unit larger
    than that goes alone)."""
    rounds, current, tokens, seqs, outputs = [], [], 0, 0, 0
    for unit in units:
        cells = aligned(unit.cells, align)
        if current and (tokens + cells > budget or seqs + unit.seqs > max_seqs or outputs + unit.outputs > max_outputs):
            rounds.append(current)
            current, tokens, seqs, outputs = [], 0, 0, 0
        current.append(unit)
        tokens += cells
        seqs += unit.seqs
        outputs += unit.outputs
    if current:
        rounds.append(current)
    return rounds


@dataclass(frozen=True)
class Shape:
    """How a scoring decode is laid out (see LlamaCppSession's SCORE_* constants)."""

    ubatch: int  # tokens per compute pass (n_ubatch)
    min_rows: int  # fewest tokens any ubatch may hold: a shorter last one is topped up by filler
    align: int  # every unit starts at a multiple of this KV cell (flash attention's key tile)


def decode_round(ll, ctx, batch, units: list[Unit], groups, out, n_vocab: int, shape: Shape) -> None:
    """One llama_decode of `units` (see LlamaCppSession.score_many), logits written into `out`.

    Filler tokens, a sequence of their own (the next free id) that nothing attends and that has no logits,
    go where a unit must start at a multiple of `shape.align` and after the last unit, until the last ubatch
    holds `shape.min_rows` tokens. llama.cpp runs a model's last layer on the output rows only, and one row
    takes other matmul kernels than several: a ubatch with a single output gets a second one, read and dropped."""
    starts, i = [], 0
    for unit in units:
        starts.append(i := aligned(i, shape.align))
        i += unit.cells
    short = i % shape.ubatch
    n = i + (shape.min_rows - short if 0 < short < shape.min_rows else 0)
    token = np.ctypeslib.as_array(batch.token, shape=(n,))
    pos = np.ctypeslib.as_array(batch.pos, shape=(n,))
    n_seq = np.ctypeslib.as_array(batch.n_seq_id, shape=(n,))
    flags = np.ctypeslib.as_array(batch.logits, shape=(n,))
    flags[:] = 0
    filler = np.ones(n, dtype=bool)
    targets: dict[int, tuple[list[tuple[int, int]], int]] = {}  # output token -> (group, continuation) pairs, row
    seq = 0
    for unit, i in zip(units, starts, strict=True):
        context = groups[unit.group][0]
        c = len(context)
        branching = [k for k in unit.conts if len(groups[unit.group][1][k]) > 1]
        seqs = list(range(seq, seq + max(1, len(branching))))
        seq += len(seqs)
        filler[i:i + unit.cells] = False
        token[i:i + c] = context
        pos[i:i + c] = np.arange(c)
        n_seq[i:i + c] = len(seqs)
        for j in range(i, i + c):
            ids = batch.seq_id[j]
            for s_index, s in enumerate(seqs):
                ids[s_index] = s
        flags[i + c - 1] = 1
        targets[i + c - 1] = ([(unit.group, k) for k in unit.conts], 0)
        i += c
        for s, k in zip(seqs, branching, strict=False):
            body = groups[unit.group][1][k][:-1]
            m = len(body)
            token[i:i + m] = body
            pos[i:i + m] = np.arange(c, c + m)
            n_seq[i:i + m] = 1
            flags[i:i + m] = 1
            for j in range(i, i + m):
                batch.seq_id[j][0] = s
            targets.update((i + row - 1, ([(unit.group, k)], row)) for row in range(1, m + 1))
            i += m
    fill = np.flatnonzero(filler)  # attended by nothing else, no logits
    token[fill] = token[0]
    pos[fill] = np.arange(len(fill))
    n_seq[fill] = 1
    for j in fill:
        batch.seq_id[j][0] = seq
    for start in range(0, n, shape.ubatch):
        if np.count_nonzero(flags[start:start + shape.ubatch]) == 1:
            flags[start if not flags[start] else start + 1] = 1
    order = np.flatnonzero(flags)
    batch.n_tokens = n
    memory = ll.llama_get_memory(ctx)
    ll.llama_memory_clear(memory, True)
    rc = ll.llama_decode(ctx, batch)
    if rc != 0:
        raise RuntimeError(f"llama_decode returned {rc} while scoring a batch of {n} tokens")
    rows = np.ctypeslib.as_array(ll.llama_get_logits(ctx), shape=(len(order), n_vocab))
    for index, logits in zip(order, rows, strict=True):
        owners, row = targets.get(int(index), ([], 0))
        for g, k in owners:
            dest = out[g][k]
            if dest is None:
                dest = out[g][k] = np.empty((len(groups[g][1][k]), n_vocab), dtype=np.float32)
            dest[row] = logits
