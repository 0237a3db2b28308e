from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

TEXT = """
Edge devices run small language models close to the data. A phone, a Jetson or a Raspberry Pi has little
memory, so models are quantized to fewer bits per weight. Quantization trades accuracy for speed and size.
The toolkit measures time to first token, prefill and decode tokens per second, peak memory and energy.
When no edge variant meets the budget, requests go to the cloud, which costs money for every token.
""" * 40


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A random Llama (width 256, so k-quants apply) with a SentencePiece tokenizer, saved as safetensors."""
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    corpus = folder / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=320, model_type="bpe",
        byte_fallback=True, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
    )
    tokenizer = LlamaTokenizer(vocab_file=str(folder / "tokenizer.model"), legacy=False)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    out = folder / "hf"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def write_recipe(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path
