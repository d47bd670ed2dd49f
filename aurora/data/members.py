"""The members every sample has: checking they are there, and the caption in ``KEY.json``."""

import json

from aurora.data.skips import BAD_JSON, MISSING_MEMBER, BadSample


def require_members(sample: dict, *exts: str) -> None:
    missing = [ext for ext in exts if ext not in sample]
    if missing:
        present = sorted(k for k in sample if not k.startswith("__"))
        raise BadSample(MISSING_MEMBER, f"{sample['__key__']} has {present}, lacks {missing}")


def metadata(sample: dict) -> dict:
    """A sample's ``.json`` member: an object whose ``text``, if any, is a string."""
    require_members(sample, "json")
    try:
        meta = json.loads(sample["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise BadSample(BAD_JSON, f"{sample['__key__']}.json: {exn}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("text", ""), str):
        raise BadSample(BAD_JSON, f"{sample['__key__']}.json must be an object with a string 'text'")
    return meta


def caption(sample: dict) -> str:
    """The ``text`` of a sample's ``.json`` member ("" when it has none)."""
    return metadata(sample).get("text", "")


def positive_number(meta: dict, name: str) -> float | None:
    """``meta[name]`` when it is a positive number, else None."""
    value = meta.get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None
