"""PyTorch through transformers: the HF reference (fp32) and GPTQ checkpoints (GPTQModel's CPU kernels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from toolkit.errors import UserError
from toolkit.runtimes import KVLoopSession

IMPORTS = ("torch", "transformers")  # what a deployment of a variant loads


def check_installed() -> None:
    import torch  # noqa: F401
    import transformers  # noqa: F401


def versions() -> dict[str, str]:
    import torch
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        from importlib.metadata import version

        out["gptqmodel"] = version("gptqmodel")
    except Exception:  # noqa: BLE001 - GPTQModel is optional here
        pass
    return out


def build_flags() -> dict[str, str]:
    import torch

    return {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def load_model(folder: Path, threads: int):
    """An HF causal LM on the CPU: GPTQ checkpoints through GPTQModel, others through transformers."""
    import torch

    torch.set_num_threads(threads)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in config or (folder / "quantize_config.json").exists():
        try:
            from gptqmodel import GPTQModel
        except ImportError as exc:
            raise UserError("GPTQ variants need gptqmodel (./scripts/setup.sh installs it)", file=folder) from exc
        wrapper = GPTQModel.load(str(folder), device="cpu")
        return wrapper.model
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32, use_safetensors=True)


class TorchSession(KVLoopSession):
    def __init__(self, path: str, threads: int, n_ctx: int, n_batch: int):
        import torch
        from transformers import AutoTokenizer

        folder = Path(path)
        if not (folder / "config.json").exists():
            raise UserError("not an HF model folder (no config.json)", file=folder)
        self.torch = torch
        self.model = load_model(folder, threads).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.n_vocab = int(self.model.config.vocab_size)
        self.add_bos = bool(getattr(self.tokenizer, "add_bos_token", False))
        self.bos = self.tokenizer.bos_token_id
        self.n_batch = n_batch
        self.reset()

    def reset(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache()

    def _run(self, tokens: list[int], all_rows: bool = True) -> np.ndarray:
        with self.torch.inference_mode():
            ids = self.torch.tensor([tokens], dtype=self.torch.long)
            out = self.model(input_ids=ids, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        rows = out.logits[0] if all_rows else out.logits[0, -1:]
        return rows.float().numpy()

    def close(self) -> None:
        self.model = None


def open_session(path: str, threads: int, n_ctx: int, n_batch: int) -> TorchSession:
    return TorchSession(path, threads, n_ctx, n_batch)
