#!/usr/bin/env bash
# llama.cpp's server for smollm2-135m-instruct Q6_K, the pick on vm-5147: AMD EPYC, 1 threads:
# OpenAI-compatible API at http://127.0.0.1:8080/v1, 1 threads as profiled, the GGUF's own chat template (--jinja).
# With llama-cpp-python instead: python3 -m llama_cpp.server --model /work/main/.edgefirst/demo/variants/smollm2-135m-instruct-gguf-q6_k-44edea0d/model.gguf --model_alias smollm2-135m-instruct-q6_k --n_ctx 2048 --n_threads 1 --host 127.0.0.1 --port 8080
set -euo pipefail
exec llama-server --model /work/main/.edgefirst/demo/variants/smollm2-135m-instruct-gguf-q6_k-44edea0d/model.gguf --alias smollm2-135m-instruct-q6_k --ctx-size 2048 --threads 1 --host 127.0.0.1 --port 8080 --jinja
