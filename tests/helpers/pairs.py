"""Preference-pair shards for the DPO tests, written directly (``data_prep.make_pairs`` has its
own tests): chosen = a real clip's codes, rejected = the same codes shifted, each side its own
length, with the reference log-probs of an LM run computed on a plain copy of its model."""

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from aurora.data.manifest import read_manifest, write_manifest
from aurora.data.pairs import REF_ID, SIDES, frames_field, member, npy_bytes, ref_field
from aurora.generation import load_lm_config
from aurora.models.audio_lm import AudioLM, encode_text
from aurora.runs import load_model_weights
from aurora.tasks.dpo import completion_logps, lm_id
from tests.helpers.tokens import token_samples

CHOSEN_FRAMES = 20
"""Frames of every chosen side (within the small LM's 24-frame context)."""


def reference_model(run: Path) -> AudioLM:
    model = AudioLM(load_lm_config(run).model)
    load_model_weights(model, run)
    return model.eval()


def make_pair_shards(out: Path, tokens: Path, run: Path | None, shards: int = 2) -> Path:
    """A pair set from the token set ``tokens`` in ``shards`` tars, with the reference log-probs
    of ``run``'s model (None: without)."""
    out.mkdir(parents=True)
    manifest = read_manifest(tokens)
    shutil.copytree(tokens / manifest["codec"], out / "codec")
    clips = [c for shard in manifest["shards"] for c in sorted(token_samples(tokens / shard["name"]).items())]
    model = reference_model(run) if run is not None else None
    ident = lm_id(model.config, model) if model is not None else None
    per_shard = -(-len(clips) // shards)
    entries = []
    for s in range(shards):
        name = f"pairs-{s:06d}.tar"
        part = clips[s * per_shard: (s + 1) * per_shard]
        with wds.TarWriter(str(out / name), mtime=0) as sink:
            for i, (key, (codes, meta)) in enumerate(part):
                chosen = codes[:, :CHOSEN_FRAMES]
                rejected = ((codes[:, : CHOSEN_FRAMES - i % 5] + 1 + i) % manifest["codebook_size"]).astype(np.int16)
                sides = dict(zip(SIDES, (chosen, rejected)))
                pair = {"text": meta.get("text", ""), **{frames_field(k): int(v.shape[1]) for k, v in sides.items()}}
                if model is not None:
                    pair.update(reference_logps(model, pair["text"], sides))
                    pair[REF_ID] = ident
                sink.write({"__key__": key, **{member(k): npy_bytes(v) for k, v in sides.items()},
                            "json": json.dumps(pair).encode()})
        entries.append({"name": name, "samples": len(part), "seconds": len(part) * CHOSEN_FRAMES / manifest["frame_rate"]})
    extra = {k: manifest[k] for k in ("n_q", "codebook_size", "frame_rate", "codec_id")}
    if ident is not None:
        extra["reference"] = {"id": ident, "run": str(run)}
    write_manifest(out, "pairs", entries, manifest["sample_rate"], codec="codec", **extra)
    return out


def reference_logps(model: AudioLM, text: str, sides: dict[str, np.ndarray]) -> dict[str, float]:
    """Each side's summed log-prob under ``model``, one side at a time (no padding)."""
    text_tokens = encode_text([text], model.config.max_text_len)
    out = {}
    with torch.no_grad():
        for side, codes in sides.items():
            codes = torch.from_numpy(codes.astype(np.int64))[None]
            out[ref_field(side)] = completion_logps(model, text_tokens, codes, torch.tensor([codes.shape[-1]])).logps.item()
    return out
