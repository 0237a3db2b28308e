"""Published JSON Schemas of the records other tools read, generated from the pydantic models.

`python -m toolkit.schemas` (or `toolkit schemas`) rewrites schemas/; a test fails when they are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from toolkit.recommend.engine import Recommendation
from toolkit.records import SCHEMA_VERSION, DeviceReport

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
MODELS: dict[str, type[BaseModel]] = {
    "recommendation.schema.json": Recommendation,  # reports/<recipe>/recommendation-<device>.json
    "device-report.schema.json": DeviceReport,  # what `toolkit profile` writes
}


def schema(name: str) -> dict:
    model = MODELS[name]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": name,
        "$comment": f"generated from {model.__module__}.{model.__name__} by `python -m toolkit.schemas`; "
                    f"records carry schema_version {SCHEMA_VERSION}",
        **model.model_json_schema(mode="serialization"),
    }


def render(name: str) -> str:
    return json.dumps(schema(name), indent=2, ensure_ascii=False) + "\n"


def write(folder: Path = SCHEMA_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in MODELS:
        (folder / name).write_text(render(name), encoding="utf-8")
        paths.append(folder / name)
    return paths


if __name__ == "__main__":
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR):
        print(path)
