"""Child process: GPTQ-quantize an HF folder with GPTQModel on the CPU.

    python -m toolkit.formats.gptq_tools HF_DIR OUT_DIR BITS GROUP_SIZE DESC_ACT CALIBRATION_FILE

Run with the working directory inside the workspace: GPTQModel writes its offload folder and logs there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def quantize(hf_dir: str, out_dir: str, bits: int, group_size: int, desc_act: bool, calibration: str) -> None:
    from gptqmodel import GPTQModel, QuantizeConfig

    lines = [ln for ln in Path(calibration).read_text(encoding="utf-8").splitlines() if ln.strip()]
    config = QuantizeConfig(
        bits=bits,
        group_size=group_size,
        desc_act=desc_act,
        offload_to_disk_path=str(Path(os.getcwd()) / "gptqmodel_offload"),
    )
    model = GPTQModel.load(hf_dir, config, device="cpu")
    model.quantize(lines, batch_size=1)
    model.save(out_dir)


if __name__ == "__main__":
    src, dst, bits, group, desc, calib = sys.argv[1:]
    quantize(src, dst, int(bits), int(group), desc == "1", calib)
