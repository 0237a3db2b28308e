"""YAML files into validated pydantic models, with one-line errors naming the file and the field.

A leaf module: recipes, model cards, the cloud catalogue and the router config all load through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from toolkit.errors import UserError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """A config section: unknown fields are mistakes, not silently ignored; nor are .inf and .nan numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def read_yaml(path: Path, what: str = "file", *, file: Path | str | None = None, field: str | None = None) -> Any:
    """The parsed YAML document; `file`/`field` name where the path came from, for the not-found error."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError(f"{what} not found", file=file or path, field=field) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        raise UserError(f"not valid YAML ({getattr(exc, 'problem', None) or exc})", file=path, field=where) from exc


def validate(model: type[M], raw: Any, path: Path | str, field_prefix: str = "") -> M:
    """`model` validated from `raw`; a pydantic error becomes one UserError naming `path` and the field."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        error = validation_error(exc, path)
        if field_prefix:
            error.field = f"{field_prefix}.{error.field}" if error.field else field_prefix
        raise UserError(error.message, file=error.file, field=error.field) from exc


def load_yaml_model(path: str | Path, model: type[M], what: str = "file") -> M:
    """Read a YAML mapping from `path` and validate it as `model`."""
    path = Path(path)
    raw = read_yaml(path, what)
    if not isinstance(raw, dict):
        raise UserError(f"a {what} must be a YAML mapping", file=path)
    return validate(model, raw, path)


def validation_error(exc: ValidationError, path: Path | str) -> UserError:
    """The first pydantic error as a one-line UserError naming file and dotted field."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "missing":
        message = "required field is missing"
    return UserError(message, file=path, field=field)
