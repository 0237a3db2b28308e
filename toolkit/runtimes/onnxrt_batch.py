"""Batched scoring for the onnxruntime runtime (see OrtSession.score_many): requests side by side along the
batch axis, padded on the right and masked, and a graph that computes logits only where they are read.

An optimum export computes the output projection (hidden x vocabulary, a fifth of SmolLM2-135M's work per
token) at every position; scoring a context needs it at one. `gather_logits_model` rewrites the graph so the
projection runs on the rows named by a new input, `logit_rows` (flat indices into batch x sequence). The
projection's kernel works row by row, so the rows it does compute come out as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LOGIT_ROWS = "logit_rows"


def gather_logits_model(model_file: Path) -> bytes | None:
    """The model with `logit_rows` gathering the final hidden states before the output projection, serialized;
    None where that cannot be done (no `onnx` package, logits not made by one matrix product, over 2 GB)."""
    try:
        import onnx
        from onnx import TensorProto, helper

        model = onnx.load(str(model_file))
        graph = model.graph
        index, node = next((i, n) for i, n in enumerate(graph.node) if "logits" in n.output)
        if node.op_type not in ("MatMul", "MatMulNBits", "Gemm") or len(graph.output) == 0:
            return None
        hidden = node.input[0]
        flat, picked = f"{hidden}/flat_for_logit_rows", f"{hidden}/logit_rows"
        graph.node.insert(index, helper.make_node("Gather", [flat, LOGIT_ROWS], [picked], axis=0))
        graph.node.insert(index, helper.make_node("Flatten", [hidden], [flat], axis=2))
        node.input[0] = picked
        graph.input.append(helper.make_tensor_value_info(LOGIT_ROWS, TensorProto.INT64, ["logit_rows"]))
        for output in graph.output:
            if output.name == "logits":
                output.type.tensor_type.ClearField("shape")
        return model.SerializeToString()
    except Exception:  # noqa: BLE001 - any failure: score with the graph as exported
        return None


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
    """One row per continuation with tokens to decode (context + that continuation but its last token), one row
    for a context whose continuations are all single tokens; rows of similar length share a forward pass,
    padded after their tokens. (Rows over a copy of a shared context's KV cache would decode the context once,
    but a padded context followed by a continuation leaves a hole in the cache, which moves the attention's sums
    by float rounding; int8-quantized activations (MatMulNBits at accuracy level 4) turn that into 1e-3.)"""
    out: list[list[np.ndarray | None]] = [[None] * len(conts) for _, conts in groups]
    rows = []  # (group, tokens, continuations answered by this row)
    for g, (context, conts) in enumerate(groups):
        if not context or any(not cont for cont in conts):
            raise ValueError("score_many needs a non-empty context and non-empty continuations")
        singles = [k for k, cont in enumerate(conts) if len(cont) == 1]
        branching = [k for k, cont in enumerate(conts) if len(cont) > 1]
        for i, k in enumerate(branching):
            rows.append((g, list(context) + conts[k][:-1], [k] + (singles if i == 0 else [])))
        if not branching:
            rows.append((g, list(context), singles))
    rows.sort(key=lambda row: len(row[1]))
    for batch in padded_batches([len(row[1]) for row in rows], budget):
        _pass(session, [rows[i] for i in batch], groups, out)
    return out


def _pass(session, rows, groups, out) -> None:
    lengths = np.array([len(tokens) for _, tokens, _ in rows], dtype=np.int64)
    width = int(lengths.max())
    ids = np.zeros((len(rows), width), dtype=np.int64)
    for r, (_, tokens, _) in enumerate(rows):
        ids[r, :len(tokens)] = tokens
        ids[r, len(tokens):] = tokens[-1]  # padding: any valid id, masked out
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    first = [r * width + len(groups[g][0]) - 1 for r, (g, _, _) in enumerate(rows)]  # the context's last token
    count = [len(tokens) - len(groups[g][0]) + 1 for g, tokens, _ in rows]
    want = np.concatenate([np.arange(f, f + n) for f, n in zip(first, count, strict=True)])
    logits, _ = session.forward(ids, mask, session.empty_past(len(rows)), np.zeros(len(rows), dtype=np.int64), want)
    offset = 0
    for (g, _, answered), n in zip(rows, count, strict=True):
        for k in answered:
            m = len(groups[g][1][k])
            out[g][k] = np.array(logits[offset:offset + m], dtype=np.float32)
        offset += n
