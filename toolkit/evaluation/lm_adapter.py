"""An lm-eval `LM` over any toolkit Session (llama.cpp, onnxruntime): loglikelihood, rolling, generate."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    peak = x.max(axis=-1, keepdims=True)
    return x - (np.log(np.exp(x - peak).sum(axis=-1, keepdims=True)) + peak)


class SessionLM(LM):
    """Every lm-eval request reduced to the Session interface; shared contexts are evaluated once."""

    def __init__(self, session, max_length: int):
        super().__init__()
        self.session = session
        self.max_length = max_length

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

    def _score_group(self, context: list[int], conts: list[list[int]]) -> list[tuple[float, bool]]:
        budget = self.max_length - max(len(c) for c in conts)
        context = context[-budget:] if budget > 0 else context[-1:]
        if not context:
            context = [self.session.bos if self.session.bos is not None else 0]
        rows = self.session.score(context, conts)
        out = []
        for cont, logits in zip(conts, rows, strict=True):
            logp = log_softmax(logits)
            picked = logp[np.arange(len(cont)), cont]
            out.append((float(picked.sum()), bool((logp.argmax(axis=-1) == np.asarray(cont)).all())))
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = defaultdict(list)
        for index, request in enumerate(requests):
            ctx, cont = self._encode_pair(*request.args)
            groups[tuple(ctx)].append((index, cont))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for ctx, members in groups.items():
            scores = self._score_group(list(ctx), [cont for _, cont in members])
            for (index, _), score in zip(members, scores, strict=True):
                results[index] = score
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for request in requests:
            tokens = self.session.tokenize(request.args[0])
            prefix = self._prefix()[0] if self._prefix() else (self.session.bos or 0)
            total = 0.0
            windows = get_rolling_token_windows(tokens, prefix_token=prefix, max_seq_len=self.max_length, context_len=1)
            for context, target in map(make_disjoint_window, windows):
                full = context + target
                logp = log_softmax(self.session.logits(full))
                preds = logp[len(context) - 1:len(full) - 1]
                total += float(preds[np.arange(len(target)), target].sum())
            out.append(total)
        return out

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
