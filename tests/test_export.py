"""`toolkit export`: a Modelfile that Ollama's grammar accepts, whose template renders a conversation the way
the model's own Jinja chat template does; a llama-server command; runnable Python snippets for ONNX and GPTQ."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.factories import CLOUDS, ladder_report
from toolkit import export
from toolkit.cli import app
from toolkit.errors import UserError
from toolkit.export import GgufInfo, export_pick, modelfile
from toolkit.recipe import Budget, Costs
from toolkit.recommend.engine import recommend

ROOT = Path(__file__).resolve().parent.parent
# Ollama's Modelfile reference (docs/modelfile.md): the instructions, and "Valid Parameters and Values" with types
INSTRUCTIONS = {"FROM", "TEMPLATE", "PARAMETER", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE"}
PARAMETERS = {"mirostat": int, "mirostat_eta": float, "mirostat_tau": float, "num_ctx": int, "repeat_last_n": int,
              "repeat_penalty": float, "temperature": float, "seed": int, "stop": str, "num_predict": int, "top_k": int,
              "top_p": float, "min_p": float}
CHATML_JINJA = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
                "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
                "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """Ollama's Modelfile grammar: `# comment` or `INSTRUCTION args`, args bare, "quoted" or \"\"\"multi-line\"\"\";
    FROM exactly once; PARAMETER `name value` with a documented name and a value of its type."""
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        command, _, args = line.partition(" ")
        assert command.upper() in INSTRUCTIONS, f"unknown instruction {command!r}"
        args = args.strip()
        if args.startswith('"""'):
            body = args[3:]
            while '"""' not in body:
                assert i < len(lines), f'unterminated """ in {command}'
                body += "\n" + lines[i]
                i += 1
            args, rest = body.split('"""', 1)
            assert rest.strip() == "", f"text after the closing quotes of {command}"
        if command.upper() == "PARAMETER":
            name, _, raw = args.partition(" ")
            assert name in PARAMETERS, f"undocumented parameter {name!r}"
            raw = raw.strip()
            if PARAMETERS[name] is str:
                assert re.fullmatch(r'"[^"]+"|\S+', raw), raw
            else:
                PARAMETERS[name](raw)
        out.append((command.upper(), args))
    assert [c for c, _ in out].count("FROM") == 1 and out[0][0] == "FROM"
    return out


def render_go(template: str, messages: list[dict[str, str]]) -> str:
    """Enough of Go's text/template to run the templates export writes: range .Messages, if eq .Role "x" / else,
    .Role, .Content, and the {{- -}} trim markers; anything else fails the test."""
    parts: list[list[str]] = []
    pos = 0
    for m in re.finditer(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", template, re.S):
        parts += [["text", template[pos:m.start()]], ["act", m.group(2), m.group(1), m.group(3)]]
        pos = m.end()
    parts.append(["text", template[pos:]])
    for k, p in enumerate(parts):
        if p[0] == "act":
            if p[2]:
                parts[k - 1][1] = parts[k - 1][1].rstrip()
            if p[3]:
                parts[k + 1][1] = parts[k + 1][1].lstrip()
    out: list[str] = []

    def run(i: int, msg: dict | None, emit: bool) -> int:
        while i < len(parts):
            kind, body = parts[i][0], parts[i][1]
            if kind == "text":
                out.extend([body] if emit else [])
            elif body in ("end", "else"):
                return i
            elif body == "range .Messages":
                end = run(i + 1, None, False)
                for message in messages if emit else []:
                    end = run(i + 1, message, True)
                i = end
            elif m := re.fullmatch(r'if eq \.Role "(\w+)"', body):
                cond = emit and msg is not None and msg["role"] == m.group(1)
                j = run(i + 1, msg, cond)
                if parts[j][1] == "else":
                    j = run(j + 1, msg, emit and not cond)
                i = j
            elif body in (".Role", ".Content"):
                out.extend([msg[body[1:].lower()]] if emit else [])
            else:
                raise AssertionError(f"unsupported template action {body!r}")
            i += 1
        return i

    run(0, None, True)
    return "".join(out)


def _rec_and_report():
    report = ladder_report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 35)])
    return recommend(report, Budget(max_ttft_ms=1000), Costs(), CLOUDS), report


def _ollama_messages(parsed: list[tuple[str, str]], conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    """What Ollama hands the template: the Modelfile's SYSTEM first when the conversation has no system message."""
    system = dict(parsed).get("SYSTEM")
    return [*([{"role": "system", "content": system}] if system else []), *conversation]


@pytest.mark.parametrize(("jinja", "expected"), [
    (CHATML_JINJA, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                   "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    ("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}",
     "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("{{ '<start_of_turn>' + role + '\n' }}", "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"),
    (None, "user: Hi\nassistant: "),
])
def test_modelfile_follows_ollama_grammar_and_renders_the_chat(jinja, expected):
    rec, report = _rec_and_report()
    variant = next(v for v in report.variants if v.id == rec.pick)
    text = modelfile(variant, rec, GgufInfo(architecture="llama", chat_template=jinja, context_length=8192, eos="<|im_end|>",
                                            license="apache-2.0", sampling={"temperature": 0.2}), "test.gguf")
    parsed = parse_modelfile(text)
    assert dict(parsed)["FROM"] == variant.path and ("PARAMETER", "num_ctx 2048") in parsed
    assert ("PARAMETER", "temperature 0.2") in parsed and ("LICENSE", "apache-2.0") in parsed
    assert render_go(dict(parsed)["TEMPLATE"], _ollama_messages(parsed, [{"role": "user", "content": "Hi"}])) == expected
    assert ("GENERIC" in text) == (jinja is None)


def test_export_files_for_gguf_onnx_and_gptq(tmp_path, monkeypatch):
    rec, report = _rec_and_report()
    monkeypatch.setattr(export, "gguf_metadata", lambda v: (GgufInfo(chat_template=CHATML_JINJA, context_length=8192), "x"))
    paths = export_pick(rec, report, tmp_path)
    command = shlex.split(paths["llama-server"].read_text().splitlines()[-1])
    assert command[:3] == ["exec", "llama-server", "--model"] and "--jinja" in command
    assert command[command.index("--threads") + 1] == str(report.device.threads_used) and "--n-gpu-layers" not in command
    offloaded = report.model_copy(deep=True)  # profiled with 12 layers on the GPU: served the same way
    for p in offloaded.profiles:
        p.gpu_layers = 12
    command = shlex.split(export_pick(rec, offloaded, tmp_path / "gpu")["llama-server"].read_text().splitlines()[-1])
    assert command[-2:] == ["--n-gpu-layers", "12"]
    folder = tmp_path / "model"
    for fmt, genai, expected in (("onnx", False, "ORTModelForCausalLM"), ("onnx", True, "import onnxruntime_genai as og"),
                                 ("gptq", False, "GPTQModel.load")):
        folder.mkdir(exist_ok=True)
        (folder / "genai_config.json").unlink(missing_ok=True)
        if genai:
            (folder / "genai_config.json").write_text("{}")
        variant = report.variants[0].model_copy(update={"format": fmt, "path": str(folder)})
        swapped = report.model_copy(update={"variants": [variant, *report.variants[1:]]})
        (snippet,) = export_pick(rec, swapped, tmp_path / f"{fmt}-{genai}", variant.id).values()
        code = snippet.read_text()
        compile(code, str(snippet), "exec")  # valid Python
        assert expected in code and repr(str(folder)) in code


def test_a_server_given_more_context_than_memory_was_measured_at_says_so(tmp_path, monkeypatch):
    rec, report = _rec_and_report()
    monkeypatch.setattr(export, "gguf_metadata", lambda v: (GgufInfo(chat_template=CHATML_JINJA, context_length=8192), "x"))
    ctx = export.serving_ctx(rec, 8192)
    for measured, warned in ((ctx, False), (ctx // 2, True), (None, True)):
        profiled = report.model_copy(deep=True)
        for p in profiled.profiles:
            p.settings = {"n_ctx": measured} if measured else {}
        text = export_pick(rec, profiled, tmp_path / str(measured))["llama-server"].read_text()
        assert ("holds a larger KV cache" in text) == warned, text
        assert f"--ctx-size {ctx} " in text


def test_export_refuses_without_an_edge_pick(tmp_path):
    report = ladder_report([(100, 800, 50, 300, 30)])
    rec = recommend(report, Budget(min_decode_tps=10_000), Costs(), CLOUDS)
    with pytest.raises(UserError, match="no edge pick"):
        export_pick(rec, report, tmp_path)


@pytest.mark.skipif(not (ROOT / "reports/smollm2-formats/devices/device-vm-2threads.json").exists(), reason="no demo report")
def test_cli_exports_the_demo_pick(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "gguf_metadata", lambda v: (GgufInfo(chat_template=CHATML_JINJA, context_length=8192), "x"))
    result = CliRunner().invoke(app, ["export", str(ROOT / "recipes/smollm2-formats.yaml"), "--report",
                                      str(ROOT / "reports/smollm2-formats/devices/device-vm-2threads.json"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "Modelfile").read_text()
    assert "q6_k" in text.lower() and (tmp_path / "llama-server.sh").exists()
    parse_modelfile(text)


@pytest.mark.real_model
def test_modelfile_from_the_real_smollm2_gguf(tmp_path):
    """The SmolLM2 GGUF from PyPI: its chat template is ChatML with a default system prompt; the Modelfile's
    Go template renders a conversation exactly as the GGUF's Jinja template does (with a generation prompt)."""
    import jinja2.sandbox

    from toolkit.catalogue import find_card
    from toolkit.sources import fetch_pypi_files

    gguf = fetch_pypi_files(find_card("smollm2-135m-instruct").source)
    info = export.read_gguf(gguf)
    assert info.chat_template and info.context_length == 8192 and info.eos == "<|im_end|>"
    rec, report = _rec_and_report()
    variant = next(v for v in report.variants if v.id == rec.pick).model_copy(update={"path": str(gguf), "model": "smollm2-135m-instruct"})
    report = report.model_copy(update={"variants": [variant if v.id == variant.id else v for v in report.variants]})
    paths = export_pick(rec, report, tmp_path)
    parsed = parse_modelfile(paths["modelfile"].read_text())
    params = [a for c, a in parsed if c == "PARAMETER"]
    assert 'stop "<|im_end|>"' in params and "num_ctx 2048" in params
    assert "SmolLM" in dict(parsed)["SYSTEM"]
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    for conversation in ([{"role": "user", "content": "Hi"}],
                         [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why?"}]):
        jinja = env.from_string(info.chat_template).render(messages=conversation, add_generation_prompt=True)
        ollama = render_go(dict(parsed)["TEMPLATE"], _ollama_messages(parsed, conversation))
        assert ollama == jinja
