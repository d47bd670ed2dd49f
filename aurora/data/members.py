"""The members every sample has: checking they are there, and the rules for ``KEY.json``.

The loader skips a sample that breaks one of these rules (or those of aurora.data.audio and
aurora.data.tokens), and the shard verifier (tools.inspect_shards) reports it, with the same
reason: both call the same functions.
"""

import json
import math

from aurora.data.skips import BAD_JSON, MISSING_MEMBER, BadSample

LENGTH_FIELDS = ("duration", "frames")
"""Optional json fields that must be positive numbers: dynamic batching buckets a clip by its
``duration`` (audio) or ``frames`` (tokens) without decoding it."""


def require_members(sample: dict, *exts: str) -> None:
    """BadSample(missing_member) unless the sample has a member for each of ``exts``."""
    missing = [ext for ext in exts if ext not in sample]
    if missing:
        present = sorted(k for k in sample if not k.startswith("__"))
        raise BadSample(MISSING_MEMBER, f"{sample['__key__']} has {present}, lacks {missing}: a sample needs "
                                        f"all its members next to each other in one tar (re-create the shard)")


def metadata(sample: dict) -> dict:
    """A sample's ``.json`` member: a UTF-8 JSON object whose ``text``, if any, is a string and
    whose length fields (``LENGTH_FIELDS``), if any, are positive numbers; BadSample(bad_json)
    otherwise."""
    require_members(sample, "json")
    name = f"{sample['__key__']}.json"
    try:
        meta = json.loads(sample["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise BadSample(BAD_JSON, f"{name} is not UTF-8 JSON ({exn}): rewrite it") from None
    if not isinstance(meta, dict):
        raise BadSample(BAD_JSON, f"{name} holds a {type(meta).__name__}, not an object: rewrite it")
    if not isinstance(meta.get("text", ""), str):
        raise BadSample(BAD_JSON, f"{name}: 'text' is {meta['text']!r}, not a string: write the caption as a string")
    for field in LENGTH_FIELDS:
        # A wrong length is refused rather than ignored: the loader would bucket (and batch) the
        # clip by it, and a writer that got it wrong may have got the rest wrong too.
        if field in meta and not is_positive_number(meta[field]):
            raise BadSample(BAD_JSON, f"{name}: '{field}' is {meta[field]!r}, not a positive number: "
                                      f"correct it or leave it out")
    return meta


def caption(sample: dict) -> str:
    """The ``text`` of a sample's ``.json`` member ("" when it has none)."""
    return metadata(sample).get("text", "")


def is_finite_number(value) -> bool:
    """Whether ``value`` is a finite int or float (JSON's NaN and Infinity are not; nor is a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_positive_number(value) -> bool:
    """Whether ``value`` is a finite int or float above 0."""
    return is_finite_number(value) and value > 0
