#!/usr/bin/env bash
# One llama.cpp server per device: run each line on its device (with llama-cpp-python[server]
# installed and the GGUF copied to the same path).
set -euo pipefail
# vm (AMD EPYC): smollm2-135m-instruct Q6_K
python3 -m llama_cpp.server --model /work/main/.edgefirst/demo/variants/smollm2-135m-instruct-gguf-q6_k-44edea0d/model.gguf --n_threads 1 --n_ctx 4096 --host 127.0.0.1 --port 8081 --model_alias edge-0
# vm (AMD EPYC): smollm2-135m-instruct Q6_K
python3 -m llama_cpp.server --model /work/main/.edgefirst/demo/variants/smollm2-135m-instruct-gguf-q6_k-44edea0d/model.gguf --n_threads 2 --n_ctx 4096 --host 127.0.0.1 --port 8082 --model_alias edge-1
