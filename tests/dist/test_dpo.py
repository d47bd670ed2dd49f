"""The DPO recipe: its references, its engines, its resume, and the inputs it refuses.

The pairs come from the real codec tokens (``tokens``): chosen = a clip's codes, rejected = the
same codes shifted (``tests.helpers.pairs``), with the reference log-probs of ``lm_run``, the LM
the policy starts from, computed one sequence at a time on a plain copy of its model.
"""

import json
import shutil

import pytest
import torch

from aurora.config import ConfigError, load_config
from aurora.tasks.dpo import DPOTask, DPOTrainConfig
from tests.helpers.pairs import make_pair_shards
from tests.helpers.runs import LM_SMALL, LM_SMALL_MODEL, assert_same_weights, cli, read_metrics, weights
from tests.helpers.steps import assert_same_steps, engine_overrides, fixed_batch_steps

CONFIG = "configs/dpo/tiny.yaml"
SGD = ["optim.name=sgd", "optim.lr=0.05", "optim.warmup_steps=0", "dpo.beta=0.5"]
"""Steps whose update is linear in the gradient, large enough to move the log-probs."""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, tokens, lm_run):
    return make_pair_shards(tmp_path_factory.mktemp("pairs") / "pairs", tokens, lm_run)


def dpo_overrides(run_dir, pairs, lm_run, *extra: str) -> list[str]:
    return [f"run.dir={run_dir}", f"data.shards={pairs}", f"model.init_from={lm_run}", "run.trust_checkpoint=true", "model.codebook_size=64",
            *LM_SMALL_MODEL, "trainer.progress_bar=false", *extra]


@pytest.fixture(scope="module")
def single(tmp_path_factory, pairs, lm_run, pool1) -> dict:
    """3 steps of 8 pairs in one process, precomputed reference."""
    run = tmp_path_factory.mktemp("dpo") / "single"
    return pool1.run(fixed_batch_steps, CONFIG, dpo_overrides(run, pairs, lm_run, "engine.name=ddp", *SGD))[0].value


def test_the_live_reference_gives_the_precomputed_loss_and_gradients(tmp_path, pairs, lm_run, single, pool1):
    """The frozen copy run beside the policy gives what the shards hold: the same losses, first
    gradients and weights; and the steps move the log-ratios (the test would notice a reference
    that followed the policy)."""
    live = pool1.run(fixed_batch_steps, CONFIG,
                     dpo_overrides(tmp_path / "live", pairs, lm_run, "engine.name=ddp", "dpo.reference=live", *SGD))
    assert_same_steps(single, live[0].value)
    first, last = single["metrics"][0], single["metrics"][-1]
    assert abs(first["rewards/margins"]) < 1e-4  # the policy is the reference at step 1
    assert last["rewards/margins"] > 0.01 and last["loss"] < first["loss"]
    assert any(g.abs().sum() > 0 for g in single["grads"].values())


@pytest.mark.parametrize("engine, reference", [("ddp", "precomputed"), ("fsdp", "precomputed"),
                                               ("zero2", "precomputed"), ("fsdp", "live"), ("zero3", "live")])
def test_two_ranks_give_what_one_process_gives(tmp_path, pairs, lm_run, single, pool2, engine, reference):
    """Each rank takes half of the 8 pairs, with both their sides (``local_micro_batches``), in 2
    accumulated micro-batches (each weighted by its pairs: ``DPOTask.loss_units``). A live
    reference is sharded like the policy (FSDP2's shards, ZeRO-3's partitions: frozen parts are
    checked sharded in tests/dist/test_frozen_parts.py) and still gives the shards' log-probs."""
    overrides = dpo_overrides(tmp_path / engine, pairs, lm_run, *SGD, f"dpo.reference={reference}",
                              "trainer.grad_accum_steps=2",
                              *engine_overrides(tmp_path)[engine])
    assert_same_steps(single, pool2.run(fixed_batch_steps, CONFIG, overrides)[0].value)


def test_stop_and_resume_is_bit_identical_and_evaluates_held_out_pairs(tmp_path, pairs, lm_run, pool1):
    """4 steps straight against 2 + 2 after a restart; held-out pairs give eval/rewards/* and the
    run samples clips from the policy at its end."""
    def train(run, steps):
        args = dpo_overrides(run, pairs, lm_run, *LM_SMALL, *SGD, f"trainer.max_steps={steps}",
                             "trainer.checkpoint_every=2", "trainer.eval_every=2", f"data.eval_shards={pairs}",
                             "trainer.eval_batches=1", "generation.num_samples=2", "generation.seconds=0.2")
        assert pool1.run(cli, "train", CONFIG, *args)[0].value == 0

    train(tmp_path / "straight", 4)
    train(tmp_path / "resumed", 2)
    train(tmp_path / "resumed", 4)
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "resumed"))
    metrics = read_metrics(tmp_path / "straight")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    evaluated = [m for m in metrics if "eval/rewards/accuracies" in m]
    assert [m["step"] for m in evaluated] == [2, 4]
    assert {"eval/loss", "eval/rewards/margins", "eval/logps/chosen"} <= evaluated[0].keys()
    assert [m["loss"] for m in metrics] == [m["loss"] for m in read_metrics(tmp_path / "resumed")]
    samples = [json.loads(line) for line in (tmp_path / "straight" / "samples" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and (tmp_path / "straight" / "samples" / samples[0]["file"]).is_file()


# -- inputs the recipe refuses --------------------------------------------------------------------
def _task(tmp_path, pairs, lm_run, *extra: str) -> DPOTask:
    cfg = load_config(DPOTrainConfig, CONFIG, dpo_overrides(tmp_path / "run", pairs, lm_run, *extra))
    task = DPOTask(cfg, env=None)
    task.build_model()
    return task


def test_pairs_without_reference_logprobs_name_the_command_to_run(tmp_path, tokens, lm_run):
    bare = make_pair_shards(tmp_path / "bare", tokens, None)
    with pytest.raises(ConfigError, match=rf"holds no reference log-probs: run `torchrun --nproc-per-node N -m "
                                          rf"data_prep.ref_logprobs --lm {lm_run} --trust-checkpoint --pairs {bare}`"):
        _task(tmp_path, bare, lm_run)
    _task(tmp_path, bare, lm_run, "dpo.reference=live")  # a live reference needs none


def test_a_reference_of_other_weights_is_refused_naming_both(tmp_path, pairs, lm_run):
    other = tmp_path / "other"
    shutil.copytree(pairs, other)
    manifest = json.loads((other / "manifest.json").read_text())
    ident = manifest["reference"]["id"]
    manifest["reference"]["id"] = "lm:0123456789abcdef01234567"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=rf"holds the log-probs of reference lm:0123456789abcdef01234567 .* whose id "
                                          rf"is {ident}: run data_prep.ref_logprobs"):
        _task(tmp_path, other, lm_run)


def test_a_policy_of_another_shape_or_with_caption_dropout_is_refused(tmp_path, pairs, lm_run):
    with pytest.raises(ConfigError, match=r"shape differs from model.init_from=.*model.max_text_len=32 but 80"):
        _task(tmp_path, pairs, lm_run, "model.max_text_len=32")
    with pytest.raises(ConfigError, match=r"model.caption_dropout=0.1, but DPO compares log-probs of the full captions"):
        _task(tmp_path, pairs, lm_run, "model.caption_dropout=0.1")


def test_the_sequence_logprob_is_the_sum_of_its_target_codes_logprobs(pairs, lm_run):
    """``completion_logps`` on one pair by hand: the log-softmax of each real delayed position's
    target code, summed; the caption and the empty slots of the delay pattern are not targets."""
    from aurora.models.audio_lm import encode_text
    from aurora.tasks.dpo import completion_logps
    from tests.helpers.pairs import reference_model

    model = reference_model(lm_run)
    K, T = model.config.n_q, 5
    codes = torch.randint(0, 64, (1, K, T), generator=torch.Generator().manual_seed(3))
    text = encode_text(["a tone"], model.config.max_text_len)
    with torch.no_grad():
        got = completion_logps(model, text, torch.cat([codes, torch.zeros(1, K, 3, dtype=torch.long)], -1),
                               torch.tensor([T]))
        logprobs = model(text, codes).log_softmax(-1)  # [1, K, T + K - 1, V]
    # Codebook k's code of frame t is the target at delayed position t + k.
    expected = sum(logprobs[0, k, t + k, codes[0, k, t]] for k in range(K) for t in range(T))
    assert got.tokens.item() == K * T
    torch.testing.assert_close(got.logps[0], expected, rtol=1e-5, atol=1e-4)
