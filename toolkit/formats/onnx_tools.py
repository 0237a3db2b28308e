"""Child process for ONNX work (export, int8, int4), so a crash or a long export stays isolated.

    python -m toolkit.formats.onnx_tools export HF_DIR OUT_DIR
    python -m toolkit.formats.onnx_tools int8 IN_DIR OUT_DIR
    python -m toolkit.formats.onnx_tools int4 IN_DIR OUT_DIR BLOCK_SIZE
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

MODEL = "model.onnx"


def copy_side_files(src: Path, dst: Path) -> None:
    """Config and tokenizer files travel with every ONNX variant, so each folder loads on its own."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_file() and not item.name.startswith(MODEL):
            shutil.copy2(item, dst / item.name)


def export(hf_dir: str, out_dir: str) -> None:
    from optimum.exporters.onnx import main_export

    main_export(
        model_name_or_path=hf_dir,
        output=out_dir,
        task="text-generation-with-past",
        device="cpu",
        trust_remote_code=False,
        local_files_only=True,
        do_validation=False,
    )


def int8(in_dir: str, out_dir: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(in_dir), Path(out_dir)
    copy_side_files(src, dst)
    quantize_dynamic(str(src / MODEL), str(dst / MODEL), weight_type=QuantType.QInt8, per_channel=False)


def int4(in_dir: str, out_dir: str, block_size: int) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    src, dst = Path(in_dir), Path(out_dir)
    copy_side_files(src, dst)
    model = onnx.load(str(src / MODEL))
    quantizer = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst / MODEL), use_external_data_format=False)


if __name__ == "__main__":
    action, *args = sys.argv[1:]
    if action == "export":
        export(*args)
    elif action == "int8":
        int8(*args)
    elif action == "int4":
        int4(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(f"unknown action {action!r}")
