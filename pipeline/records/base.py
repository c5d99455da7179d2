"""The base of every stored JSON document: a pydantic model that parses and serializes itself.

A record is written with exactly the fields its writer set (`exclude_unset`), so a document keeps
the shape it had when it was a plain dict: optional fields appear only when they were given, and
fields a newer writer added survive a read and a re-write by older code (`extra="allow"`). A
document that fails validation is one `ValueError` naming the record, not a `KeyError` deep inside
a run.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

R = TypeVar("R", bound="Record")


class Record(BaseModel):
    # NaN and infinity stay NaN and Infinity in the JSON, as json.dumps wrote them before records
    # (lm-eval reports a NaN metric; null would drop it from the eval table).
    model_config = ConfigDict(extra="allow", populate_by_name=True, ser_json_inf_nan="constants")

    # How the document is laid out on storage (kept as each writer laid it out before records existed).
    json_indent: ClassVar[int | None] = 1
    json_sort_keys: ClassVar[bool] = True

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True)

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), indent=self.json_indent, sort_keys=self.json_sort_keys).encode()

    @classmethod
    def from_dict(cls: type[R], raw: dict[str, Any]) -> R:
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise ValueError(f"malformed {cls.__name__} ({_first_problem(error)})") from None

    @classmethod
    def from_bytes(cls: type[R], data: bytes | str) -> R:
        try:
            return cls.model_validate_json(data)
        except ValidationError as error:
            raise ValueError(f"malformed {cls.__name__} ({_first_problem(error)})") from None


def _first_problem(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "document"
    return f"{where}: {first['msg']}" + (f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else "")


def encode_jsonl(rows: list[dict[str, Any]]) -> bytes:
    """Rows as JSON lines (metrics segments, sample ids)."""
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def decode_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
