"""Bits per byte compares models with different tokenizers: every model scores the same passages of text, and
the log-likelihood is divided by the text's UTF-8 bytes. Checked on sessions whose answers are known by hand:
a model that spreads its probability evenly over V tokens spends log2(V) bits on every token."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from toolkit.quality.fidelity import passages, perplexity

LINES = [f"Line {i:02d}: edge devices run small models, é and ü included.\n" for i in range(40)]
TEXT = "".join(LINES)


class Uniform:
    """Logits that are all equal: p = 1 / n_vocab for whatever comes next."""

    add_bos, bos = False, None

    def __init__(self, n_vocab: int, tokenize):
        self.n_vocab, self._tokenize = n_vocab, tokenize

    def tokenize(self, text: str) -> list[int]:
        return self._tokenize(text)

    def detokenize(self, tokens: list[int]) -> str:
        raise AssertionError("the passages' own bytes are counted, not a detokenization")

    def logits(self, tokens: list[int]) -> np.ndarray:
        return np.zeros((len(tokens), self.n_vocab), dtype=np.float32)


def by_byte(text: str) -> list[int]:
    return list(text.encode())


def by_word(text: str) -> list[int]:
    """One token per word and per line break (a coarser tokenizer: fewer, longer tokens)."""
    return [zlib.crc32(w.encode()) % 1000 for w in text.replace("\n", " \n ").split(" ") if w]


def test_passages_are_whole_lines_of_at_least_ctx_times_two_bytes():
    found = passages(TEXT, 32, 4)
    line = len(LINES[0].encode())  # 59 bytes: two lines make a passage of >= 64 bytes
    assert found == ["".join(LINES[2 * i:2 * i + 2]) for i in range(4)]
    assert all(len(p.encode()) == 2 * line for p in found)


def test_bits_per_byte_by_hand_for_two_tokenizers():
    ctx, chunks = 32, 3
    second_passages = sum(len("".join(LINES[4 * i + 2:4 * i + 4]).encode()) for i in range(chunks))
    byte_model = perplexity(Uniform(256, by_byte), TEXT, ctx, chunks)
    word_model = perplexity(Uniform(1000, by_word), TEXT, ctx, chunks)
    # the same bytes for both tokenizers: the second passage of each pair
    assert byte_model["bytes_scored"] == word_model["bytes_scored"] == second_passages
    # one byte per token at p = 1/256: exactly 8 bits per byte, and per-token perplexity 256
    assert byte_model["bits_per_byte"] == pytest.approx(8.0)
    assert byte_model["perplexity"] == pytest.approx(256)
    # a word-level model at p = 1/1000 per word: log2(1000) bits per word spread over the words' bytes
    words = sum(len(by_word("".join(LINES[4 * i + 2:4 * i + 4]))) for i in range(chunks))
    assert word_model["tokens_scored"] == words
    assert word_model["bits_per_byte"] == pytest.approx(words * math.log2(1000) / second_passages)
    # per token the word model looks worse (1000 > 256); per byte it is better: only bits per byte compares them
    assert word_model["perplexity"] > byte_model["perplexity"] and word_model["bits_per_byte"] < byte_model["bits_per_byte"]


def test_long_passages_are_scored_in_pieces_that_fit_the_context():
    seen = []

    class Recording(Uniform):
        def logits(self, tokens):
            seen.append(len(tokens))
            return super().logits(tokens)

    out = perplexity(Recording(256, by_byte), TEXT, 32, 2)
    assert max(seen) <= 32  # byte tokens: a 118-byte passage is 118 tokens, cut into pieces of 16
    assert out["tokens_scored"] == out["bytes_scored"] == 2 * 2 * len(LINES[0].encode())


def test_reference_windows_are_reused_by_the_variant(tmp_path):
    ref = perplexity(Uniform(256, by_byte), TEXT, 32, 2, {"dir": str(tmp_path), "write": True})

    class Other(Uniform):
        def tokenize(self, text):
            raise AssertionError("a variant scores the reference's token ids, it does not tokenize again")

    same = perplexity(Other(256, by_byte), TEXT, 32, 2, {"dir": str(tmp_path), "write": False})
    assert same["bytes_scored"] == ref["bytes_scored"] and same["kl_mean"] == pytest.approx(0, abs=5e-3)  # logits stored as float16
    assert same["top1_agreement"] == 1.0


class Peaked(Uniform):
    """Random logits, three standard deviations wide: far from the uniform reference."""

    def logits(self, tokens):
        return np.random.default_rng(len(tokens)).normal(size=(len(tokens), self.n_vocab)).astype(np.float32) * 3


def test_scoring_stops_once_a_figure_is_sure_to_break_its_limit_and_its_bounds_hold(tmp_path):
    """With `stop_over`, scoring stops after the first pair of passages whose figures so far already put the
    whole text's over a limit; the lower bounds it returns never exceed what scoring everything gives."""
    reference = {"dir": str(tmp_path), "write": True}
    assert "lower_bounds" not in perplexity(Uniform(256, by_byte), TEXT, 32, 6, reference, stop_over={"kl": 0})
    reading = {"dir": str(tmp_path), "write": False}
    full = perplexity(Peaked(256, by_byte), TEXT, 32, 6, reading)
    assert full["chunks"] == 6 and "lower_bounds" not in full

    halfway = {"kl": full["kl_mean"] / 2, "perplexity": full["perplexity"] ** 0.5, "bits_per_byte": full["bits_per_byte"] / 2}
    for metric, limit in halfway.items():
        stopped = perplexity(Peaked(256, by_byte), TEXT, 32, 6, reading, stop_over={metric: limit})
        bounds = stopped["lower_bounds"]
        assert stopped["chunks"] < 6 and bounds[metric] > limit, (metric, stopped)
        assert bounds["kl"] <= full["kl_mean"] and bounds["perplexity"] <= full["perplexity"]
        assert bounds["bits_per_byte"] <= full["bits_per_byte"]
        assert stopped["tokens_scored"] < full["tokens_scored"]

    # a limit the whole text stays under never stops it: the same figures as without one
    never = perplexity(Peaked(256, by_byte), TEXT, 32, 6, reading, stop_over={"kl": full["kl_mean"] * 1.01})
    assert never == full
