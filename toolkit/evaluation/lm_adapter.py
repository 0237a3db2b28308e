"""An lm-eval `LM` over any toolkit Session (llama.cpp, onnxruntime): loglikelihood, rolling, generate."""

from __future__ import annotations

import numpy as np
from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from toolkit.quality.fidelity import log_normaliser, log_softmax, max_rows, rolling_loglikelihood, score_groups, slices

__all__ = ["SessionLM", "log_softmax"]


class SessionLM(LM):
    """Every lm-eval request reduced to the Session interface. Requests sharing a context form one group whose
    context is evaluated once; with `batched` (the default) and a session that has `score_many`, many groups
    go to the runtime per call (llama.cpp: several sequences per decode; onnxruntime: rows of one batch)."""

    def __init__(self, session, max_length: int, batched: bool = True):
        super().__init__()
        self.session = session
        self.max_length = max_length
        self.batched = batched

    # -- tokenisation, as lm-eval's HF model does it: trailing spaces of the context move to the continuation
    def _prefix(self) -> list[int]:
        s = self.session
        return [s.bos] if s.add_bos and s.bos is not None else []

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            continuation = context[-spaces:] + continuation
            context = context[:-spaces]
        whole = self.session.tokenize(context + continuation)
        ctx = self.session.tokenize(context)
        return self._prefix() + ctx, whole[len(ctx):]

    def _fit(self, context: list[int], conts: list[list[int]]) -> list[int]:
        """The context cut from the left so that context + the longest continuation fit max_length."""
        budget = self.max_length - max(len(c) for c in conts)
        context = context[-budget:] if budget > 0 else context[-1:]
        if not context:
            context = [self.session.bos if self.session.bos is not None else 0]
        return context

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for index, request in enumerate(requests):
            ctx, cont = self._encode_pair(*request.args)
            groups.setdefault(tuple(ctx), []).append((index, cont))
        work = [(self._fit(list(ctx), [c for _, c in members]), members) for ctx, members in groups.items()]
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        rows_of = lambda item: sum(len(c) for _, c in item[1])  # noqa: E731
        for part in slices(work, rows_of, max_rows(self.session)):
            scored = score_groups(self.session, [(ctx, [c for _, c in members]) for ctx, members in part], self.batched)
            for (_, members), rows in zip(part, scored, strict=True):
                for (index, cont), logits in zip(members, rows, strict=True):
                    target = np.asarray(cont)
                    picked = logits[np.arange(len(cont)), target].astype(np.float64) - log_normaliser(logits)
                    results[index] = (float(picked.sum()), bool((logits.argmax(axis=-1) == target).all()))
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        prefix = self._prefix()[0] if self._prefix() else (self.session.bos or 0)
        windows, owner = [], []
        for index, request in enumerate(requests):
            tokens = self.session.tokenize(request.args[0])
            for context, target in map(make_disjoint_window, get_rolling_token_windows(
                    tokens, prefix_token=prefix, max_seq_len=self.max_length, context_len=1)):
                windows.append((list(context), list(target)))
                owner.append(index)
        totals = [0.0] * len(requests)
        for index, value in zip(owner, rolling_loglikelihood(self.session, windows, self.batched), strict=True):
            totals[index] += value
        return totals

    def generate_until(self, requests) -> list[str]:
        out = []
        for request in requests:
            context, kwargs = request.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", 256))
            prompt = (self._prefix() + self.session.tokenize(context))[-(self.max_length - max_new):]
            token, generated = self.session.prefill(prompt), []
            text = ""
            for _ in range(max_new):
                generated.append(token)
                text = self.session.detokenize(generated)
                if any(stop in text for stop in until):
                    break
                token = self.session.decode(token)
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out
