"""Child process: quantize one GGUF file with llama.cpp's C API (`python -m ... SRC DST FTYPE THREADS`)."""

from __future__ import annotations

import ctypes
import sys


def main(src: str, dst: str, ftype: int, threads: int) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = True
    return int(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))


if __name__ == "__main__":
    rc = main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    if rc != 0:
        print(f"error: llama_model_quantize returned {rc}", file=sys.stderr)
    sys.exit(1 if rc else 0)
