"""Reading and writing the typed run files: a dataclass to JSON and back, validated on the way in
(pydantic's ``TypeAdapter`` over plain dataclasses), so a file written by another version or by
hand fails at the read with the field it lacks, not later with a ``KeyError``."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class RunFileError(ValueError):
    """A run file that is missing or not what its owner type says; the message names the file."""


@functools.cache
def _adapter(cls: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(cls)


def _unset(f: dataclasses.Field, value: Any) -> bool:
    """Whether ``value`` is the field's default (left out of the file, filled back in on reading)."""
    if f.default is not dataclasses.MISSING:
        return value == f.default
    return f.default_factory is not dataclasses.MISSING and value == f.default_factory()


def to_json(obj: Any) -> Any:
    """``obj`` as JSON values: dataclasses as dicts without the optional fields left at their default."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: to_json(value)
            for f in dataclasses.fields(obj)
            if not _unset(f, value := getattr(obj, f.name))
        }
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    return obj


def from_json(cls: type[T], data: Any, source: str = "data") -> T:
    """``data`` (JSON values) as ``cls``; a ``RunFileError`` naming ``source`` and the bad fields."""
    from pydantic import ValidationError

    try:
        return _adapter(cls).validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise RunFileError(f"{source} is not a {cls.__name__} file ({problems})") from None


def write(obj: Any, path: str | Path, indent: int | None = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(obj), indent=indent))
    return path


def read(cls: type[T], path: str | Path, what_writes: str) -> T:
    """The ``cls`` in ``path``; a missing file's error says which command writes it."""
    path = Path(path)
    if not path.exists():
        raise RunFileError(f"{path} does not exist ({what_writes} writes it)")
    return from_json(cls, json.loads(path.read_text()), str(path))


def write_lines(rows: list[Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(to_json(r)) + "\n" for r in rows))
    return path


def read_lines(cls: type[T], path: str | Path, what_writes: str) -> list[T]:
    path = Path(path)
    if not path.exists():
        raise RunFileError(f"{path} does not exist ({what_writes} writes it)")
    lines = path.read_text().splitlines()
    return [from_json(cls, json.loads(line), f"{path}:{i + 1}") for i, line in enumerate(lines)]
