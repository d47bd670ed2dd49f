"""The members every sample has: checking they are there, and the rules for ``KEY.json``.

The loader skips a sample that breaks one of these rules (or those of aurora.data.audio and
aurora.data.tokens), and the shard verifier (tools.inspect_shards) reports it, with the same
reason: both call the same functions.
"""

import json
import math
import reprlib
from pathlib import PurePosixPath

from aurora.data.skips import BAD_JSON, BAD_KEY, MISSING_MEMBER, BadSample

LENGTH_FIELDS = ("duration", "frames")
"""Optional json fields that must be positive numbers: the clip's length as its writer saw it
(dynamic batching measures clips by their audio or .npy header, which cannot disagree with
what is decoded)."""


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot name a sample's members, or None: an absolute path, or a ``..``
    component, would put its members outside the folder the tar is extracted to."""
    path = PurePosixPath(key)
    if path.is_absolute() or ".." in path.parts:
        return f"key {key!r} is an absolute path or climbs out of its folder with '..'"
    return None


def require_members(sample: dict, *exts: str) -> None:
    """BadSample(bad_key) unless the sample's key is safe (``key_problem``), BadSample
    (missing_member) unless it has a member for each of ``exts``."""
    problem = key_problem(sample["__key__"])
    if problem:
        raise BadSample(BAD_KEY, f"{problem}: rename the sample (e.g. with data_prep.make_shards)")
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
    # ValueError: also an integer of more digits than Python converts (sys.get_int_max_str_digits);
    # RecursionError: nesting deeper than the parser's recursion limit.
    except (ValueError, RecursionError) as exn:
        raise BadSample(BAD_JSON, f"{name} is not UTF-8 JSON ({str(exn)[:200]}): rewrite it") from None
    if not isinstance(meta, dict):
        raise BadSample(BAD_JSON, f"{name} holds a {type(meta).__name__}, not an object: rewrite it")
    if not isinstance(meta.get("text", ""), str):
        raise BadSample(BAD_JSON, f"{name}: 'text' is {reprlib.repr(meta['text'])}, not a string: write the caption as a string")
    for field in LENGTH_FIELDS:
        # A wrong length is refused rather than ignored: a writer that got it wrong may have got
        # the rest wrong too.
        if field in meta and not is_positive_number(meta[field]):
            raise BadSample(BAD_JSON, f"{name}: '{field}' is {reprlib.repr(meta[field])}, not a positive number: "
                                      f"correct it or leave it out")
    return meta


def caption(sample: dict) -> str:
    """The ``text`` of a sample's ``.json`` member ("" when it has none)."""
    return metadata(sample).get("text", "")


def is_finite_number(value) -> bool:
    """Whether ``value`` is a finite int or float (JSON's NaN and Infinity are not; nor is a bool,
    nor an int too large for a float)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        return False


def is_positive_number(value) -> bool:
    """Whether ``value`` is a finite int or float above 0."""
    return is_finite_number(value) and value > 0
