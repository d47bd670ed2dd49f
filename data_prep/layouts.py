"""Corpus layouts: recognise how a corpus is laid out on disk and list its clips.

Four layouts are understood (``detect`` tries them in this order):

``jsonl``     a JSON-lines file (``.jsonl``, or ``.json`` holding JSON lines or one JSON array),
              or a directory holding ``metadata.jsonl`` (what ``data_prep.synth`` writes). One
              object a line: ``path`` (relative to the file's directory, or absolute), ``text``
              or ``caption``, optional ``speaker``, ``language``, ``source``, ``start`` and
              ``end`` (seconds: only that span of the file is used), any other fields (kept).
``ljspeech``  a directory with ``metadata.csv`` (``id|text|normalized`` a line) and ``wavs/``:
              ``text`` is the normalized transcript, ``raw_text`` the raw one.
``libritts``  a directory tree ``SPEAKER/CHAPTER/ID.wav`` with ``ID.normalized.txt`` (the
              ``text``) and, when present, ``ID.original.txt`` (``raw_text``) beside each clip.
``folder``    any other directory: every audio file below it (recursively), without text.

``read_corpus`` turns a layout into a list of entries, one per clip, in a fixed order (the
file's order for listings, sorted relative paths for directory walks). An entry is a plain
dict (it travels to worker processes)::

    {"index": 7, "line": 9, "audio": "/abs/path.wav", "path": "clips/path.wav", "key": "clips__path",
     "meta": {"text": ..., "source": ..., "speaker": ..., extra fields}, "start": None, "end": None}

An entry that cannot become a clip (a bad line, a clip without its transcript) carries
``reason`` and ``error`` in place of ``audio``; it is reported as skipped, never fatal.
Paths and files hidden by a leading dot are ignored by the directory walks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path

from aurora.data.members import is_finite_number

LAYOUTS = ("jsonl", "ljspeech", "libritts", "folder")
UNDERSTOOD = ("a JSON-lines manifest (.jsonl/.json file, or a directory holding metadata.jsonl); "
              "an LJSpeech folder (metadata.csv + wavs/); a LibriTTS tree (SPEAKER/CHAPTER/ID.wav + "
              "ID.normalized.txt); a folder of audio files (.wav .flac .ogg .opus .mp3, searched recursively)")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")
JSONL_NAME = "metadata.jsonl"
MAX_KEY_CHARS = 72
"""Longer keys are shortened (with a hash) so member names (with a de-duplicating hash, ``_segNNNN``
and the extension) fit the 100 characters of a plain tar header."""

MAX_SPAN_SECONDS = 1e9
"""The largest ``start``/``end`` of a listing line: beyond any recording (and the key, in
milliseconds, stays a finite number)."""

BAD_ENTRY = "bad_entry"
"""A listing line that cannot be used (not JSON, no ``path``, a bad field)."""
MISSING_TEXT = "missing_text"
"""A clip of a transcribed layout without its transcript (LibriTTS: no ID.normalized.txt)."""


class LayoutError(Exception):
    """The input is not a corpus in a layout understood; the message says what was expected."""


@dataclass
class Corpus:
    layout: str
    root: Path
    """Directory that the entries' relative ``path`` are relative to."""
    name: str
    """The corpus name: ``source`` of clips whose listing names none, and ``corpus`` of all."""
    entries: list[dict]


def make_key(path: str) -> str:
    """A WebDataset key from a clip path: no extension, no dots, separators as '__'."""
    stem = os.path.splitext(path.lstrip("/"))[0]
    key = re.sub(r"[^A-Za-z0-9_-]", "_", stem.replace("/", "__"))
    if len(key) > MAX_KEY_CHARS:
        key = key[: MAX_KEY_CHARS - 9] + "_" + hashlib.sha1(key.encode()).hexdigest()[:8]
    return key


def is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS and not path.name.startswith(".")


def detect(path: Path) -> str:
    """The layout of ``path`` (see the module doc); LayoutError when it is none of them."""
    if path.is_file():
        if path.suffix.lower() in (".jsonl", ".json"):
            return "jsonl"
        raise LayoutError(f"{path} is a file but not a .jsonl/.json manifest; layouts understood: {UNDERSTOOD}")
    if not path.is_dir():
        raise LayoutError(f"{path} does not exist")
    if (path / JSONL_NAME).is_file():
        return "jsonl"
    if (path / "metadata.csv").is_file() and (path / "wavs").is_dir():
        return "ljspeech"
    if any(not _hidden(p, path) for p in path.glob("*/*/*.normalized.txt")):
        return "libritts"
    return "folder"


def read_corpus(path: Path, layout: str = "auto", name: str | None = None) -> Corpus:
    """The entries of the corpus at ``path``; ``layout`` "auto" detects it."""
    path = Path(path)
    if layout == "auto":
        layout = detect(path)
    elif not path.exists():
        raise LayoutError(f"{path} does not exist")
    readers = {"jsonl": _read_jsonl, "ljspeech": _read_ljspeech, "libritts": _read_libritts, "folder": _read_folder}
    if layout not in readers:
        raise LayoutError(f"unknown layout {layout!r}: choose auto or one of {', '.join(LAYOUTS)}")
    if layout == "jsonl" and path.is_dir():
        path = path / JSONL_NAME
    elif layout != "jsonl" and not path.is_dir():
        raise LayoutError(f"the {layout} layout needs a directory, and {path} is not one")
    if layout == "ljspeech" and not ((path / "metadata.csv").is_file() and (path / "wavs").is_dir()):
        raise LayoutError(f"{path} is not an LJSpeech folder: it needs metadata.csv (id|text|normalized) and wavs/")
    if layout == "jsonl" and not path.is_file():
        raise LayoutError(f"{path} does not exist (a JSON-lines manifest, e.g. DIR/{JSONL_NAME})")
    root = path.parent if layout == "jsonl" else path
    corpus_name = name or root.resolve().name
    entries = readers[layout](path)
    if not entries:
        what = {"jsonl": "entries", "folder": "audio files"}.get(layout, "clips")
        raise LayoutError(f"{path} ({layout} layout) holds no {what}; layouts understood: {UNDERSTOOD}")
    _number_and_key(entries)
    return Corpus(layout, root, corpus_name, entries)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _visible(paths, root: Path) -> list[Path]:
    """``paths`` without those under a hidden (dot) file or directory, sorted by relative path."""
    return sorted((p for p in paths if not _hidden(p, root)), key=lambda p: p.relative_to(root).as_posix())


def _entry(audio: Path, path: str, meta: dict, line: int | None = None, key: str | None = None, **more) -> dict:
    entry = {"line": line, "audio": str(audio), "path": path, "key": key or make_key(path), "meta": meta,
             "start": None, "end": None}
    entry.update(more)
    return entry


def _bad(reason: str, error: str, path: str | None, line: int | None = None) -> dict:
    return {"line": line, "path": path, "reason": reason, "error": error}


def _number_and_key(entries: list[dict]) -> None:
    """Give each entry its index, and keys that differ (distinct paths may sanitise alike; one file
    may be listed twice, e.g. for two spans)."""
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        entry["index"] = index
        if "key" not in entry:
            continue
        key = entry["key"]
        if key in seen:
            digest = hashlib.sha1(f"{entry['path']}|{entry['start']}|{entry['end']}".encode()).hexdigest()[:8]
            key = f"{key}_{digest}"
            suffix = 1
            while key in seen:
                suffix += 1
                key = f"{entry['key']}_{digest}_{suffix}"
        entry["key"] = key
        seen.add(key)


# -- jsonl ------------------------------------------------------------------------------------------
def _read_jsonl(manifest: Path) -> list[dict]:
    text = manifest.read_text(encoding="utf-8")
    if manifest.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except (ValueError, RecursionError) as exn:  # as aurora.data.members.metadata
            raise LayoutError(f"{manifest} is neither JSON lines nor a valid JSON array: {str(exn)[:200]}") from None
        numbered = [(number, row, None) for number, row in enumerate(rows, start=1)]
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line), None))
            except (ValueError, RecursionError) as exn:  # as aurora.data.members.metadata
                numbered.append((number, None, f"not valid JSON: {str(exn)[:200]}"))
    return [_jsonl_entry(manifest.parent, number, row, error) for number, row, error in numbered]


def _jsonl_entry(root: Path, number: int, row, error: str | None) -> dict:
    if error is not None:
        return _bad(BAD_ENTRY, error, None, number)
    if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not row["path"]:
        return _bad(BAD_ENTRY, "not a JSON object with a string 'path'", None, number)
    path = row["path"]
    fields = dict(row)
    del fields["path"]
    if "text" not in fields and "caption" in fields:
        fields["text"] = fields.pop("caption")
    text = fields.pop("text", "")
    if not isinstance(text, str):
        return _bad(BAD_ENTRY, f"{path}: 'text' must be a string, got {reprlib.repr(text)}", path, number)
    start, end = fields.pop("start", None), fields.pop("end", None)
    for name, value in (("start", start), ("end", end)):
        if value is not None and not (is_finite_number(value) and 0 <= value <= MAX_SPAN_SECONDS):
            return _bad(BAD_ENTRY, f"{path}: '{name}' must be a number of seconds in [0, {MAX_SPAN_SECONDS:g}], got "
                                   f"{reprlib.repr(value)}", path, number)
    if start is not None and end is not None and end <= start:
        return _bad(BAD_ENTRY, f"{path}: 'end' ({end}) must be after 'start' ({start})", path, number)
    audio = Path(path) if os.path.isabs(path) else root / path
    key = make_key(path)
    if start is not None or end is not None:
        key = make_key(f"{os.path.splitext(path)[0]}_{_millis(start or 0)}-{_millis(end) if end is not None else 'end'}")
    return _entry(audio, path, {"text": text, **fields}, number, key=key,
                  start=None if start is None else float(start), end=None if end is None else float(end))


def _millis(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


# -- ljspeech ---------------------------------------------------------------------------------------
def _read_ljspeech(root: Path) -> list[dict]:
    entries = []
    wavs = root / "wavs"
    for number, line in enumerate((root / "metadata.csv").read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        clip_id = fields[0].strip()
        if len(fields) < 2 or not clip_id:
            entries.append(_bad(BAD_ENTRY, "not an 'id|text|normalized' line", None, number))
            continue
        raw = fields[1].strip()
        normalized = "|".join(fields[2:]).strip() if len(fields) > 2 else raw
        audio = wavs / f"{clip_id}.wav"
        if not audio.exists():  # an LJSpeech-style corpus may keep another format
            audio = next((wavs / f"{clip_id}{ext}" for ext in AUDIO_EXTENSIONS if (wavs / f"{clip_id}{ext}").exists()),
                         audio)
        path = audio.relative_to(root).as_posix()
        entries.append(_entry(audio, path, {"text": normalized, "raw_text": raw}, number, key=make_key(clip_id)))
    return entries


# -- libritts ---------------------------------------------------------------------------------------
def _read_libritts(root: Path) -> list[dict]:
    texts = {p.with_name(p.name[: -len(".normalized.txt")]): p for p in _visible(root.glob("*/*/*.normalized.txt"), root)}
    clips = {p.with_suffix(""): p for p in _visible(root.glob("*/*/*"), root) if is_audio(p) and p.is_file()}
    entries = []
    for stem in sorted(set(texts) | set(clips), key=lambda p: p.relative_to(root).as_posix()):
        speaker, chapter = stem.relative_to(root).parts[:2]
        audio = clips.get(stem, stem.with_suffix(".wav"))
        path = audio.relative_to(root).as_posix()
        if stem not in texts:
            entries.append(_bad(MISSING_TEXT, f"{path}: no {stem.name}.normalized.txt beside it", path))
            continue
        meta = {"text": texts[stem].read_text(encoding="utf-8").strip()}
        original = stem.with_name(stem.name + ".original.txt")
        if original.is_file():
            meta["raw_text"] = original.read_text(encoding="utf-8").strip()
        meta.update(speaker=speaker, chapter=chapter)
        entries.append(_entry(audio, path, meta, key=make_key(stem.name)))
    return entries


# -- folder -----------------------------------------------------------------------------------------
def _read_folder(root: Path) -> list[dict]:
    return [_entry(p, p.relative_to(root).as_posix(), {"text": ""}) for p in _visible(_walk_audio(root), root)]


def _walk_audio(root: Path):
    """Audio files below ``root``, following symlinked directories (once each), not entering hidden ones."""
    seen = set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link loop, or a directory linked twice
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))  # a fixed walk: a fixed pruning
        for name in files:
            path = Path(folder) / name
            if is_audio(path) and path.is_file():
                yield path
