"""MLLMJudge on tiny random-weight LLaVA, Qwen2-VL and Qwen2.5-VL folders, plus `parse_score` on its own.

Random weights give arbitrary answers, so the model tests check the plumbing and the accounting (one answer per
cover, NaN exactly where the answer does not parse, determinism), not the score values. Parsing of real generated
text is checked with folders whose saved generation_config.json biases one token: transformers' own logits processor
then makes the real model answer that token; nothing is mocked.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from icg_rl.evaluation.judge import DEFAULT_JUDGE_PROMPT, JudgeResult, MLLMJudge, parse_score
from tests.models import tiny_mllms

FAMILIES = ["llava", "qwen2_vl", "qwen2_5_vl"]
TITLES = ["Grim Curse", "The Haunted Crypt of the Long Night", "Love in Paris"]
IMAGES = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # [N, H, W, 3]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Qwen2-VL with a chat template; LLaVA and Qwen2.5-VL without (the image-token prompt path)."""
    root = tmp_path_factory.mktemp("judge_mllms")
    torch.manual_seed(0)
    return {"llava": tiny_mllms.save_tiny_llava(root / "llava"),
            "qwen2_vl": tiny_mllms.save_tiny_qwen2_vl(root / "qwen2_vl", chat_template=True),
            "qwen2_5_vl": tiny_mllms.save_tiny_qwen2_5_vl(root / "qwen2_5_vl", chat_template=False)}


@pytest.mark.parametrize(("text", "expected"), [
    ("4", 4), ("Score: 5/5", 5), ("I'd say 3.", 3), ("1", 1), ("  2\n", 2), ("4</w>", 4), ("score=4, not 2", 4),
    ("10 out of 10, so 5", 5), ("Rating: 7, no wait, 2", 2),
    ("7", None), ("10", None), ("0", None), ("", None), ("no idea", None), ("3.5", None), ("2nd", None),
    ("x2", None), ("44444444", None), ("2024", None),
])
def test_parse_score(text, expected):
    assert parse_score(text) == expected


def test_default_prompt_states_criteria_and_takes_a_title():
    prompt = DEFAULT_JUDGE_PROMPT.format(title="Grim Curse")
    assert "Grim Curse" in prompt and "1 to 5" in prompt
    assert all(word in prompt.lower() for word in ("relevance", "quality", "appeal", "single integer"))


def test_mean_ignores_nan_and_is_nan_when_nothing_parsed():
    assert JudgeResult(np.array([2.0, np.nan, 4.0]), ["2", "?", "4"], 1).mean == 3.0
    assert np.isnan(JudgeResult(np.array([np.nan, np.nan]), ["?", "?"], 2).mean)


@pytest.mark.parametrize("family", FAMILIES)
def test_accounting_and_determinism_on_random_models(folders, family):
    judge = MLLMJudge.from_pretrained(folders[family], max_new_tokens=4, batch_size=2)  # 2 batches: 2 + 1 covers
    first, second = judge.score(IMAGES, TITLES), judge.score(IMAGES, TITLES)
    assert first.scores.shape == (3,) and first.scores.dtype == np.float64 and len(first.answers) == 3
    assert first.unparseable == int(np.isnan(first.scores).sum())
    parsed = first.scores[~np.isnan(first.scores)]
    assert set(parsed.tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    for answer, value in zip(first.answers, first.scores):  # each score is exactly the parse of its answer
        assert (parse_score(answer) is None and np.isnan(value)) or parse_score(answer) == value
    assert first.answers == second.answers
    np.testing.assert_array_equal(first.scores, second.scores)
    one_batch = MLLMJudge.from_pretrained(folders[family], max_new_tokens=4, batch_size=8).score(IMAGES, TITLES)
    assert one_batch.answers == first.answers  # left padding: batching does not change the answers


def test_prompts_per_family(folders):
    llava, qwen2_vl, qwen2_5_vl = (MLLMJudge.from_pretrained(folders[f]) for f in FAMILIES)
    assert llava.build_prompt("Grim Curse") == "<image>\n" + DEFAULT_JUDGE_PROMPT.format(title="Grim Curse")
    chat = qwen2_vl.build_prompt("Grim Curse")  # the folder's chat template
    assert chat.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>")
    assert "Grim Curse" in chat and chat.endswith("<|im_start|>assistant\n")
    assert qwen2_5_vl.build_prompt("Grim Curse").startswith("<|vision_start|><|image_pad|><|vision_end|>\n")
    assert llava.processor.tokenizer.padding_side == "left"


def _biased_copy(folder, tmp_path, judge: MLLMJudge, token: str):
    """A copy of `folder` whose generation_config.json strongly biases `token` (a real GenerationConfig field,
    applied by transformers' SequenceBiasLogitsProcessor), so the real model's greedy answer is that token."""
    ids = judge.processor.tokenizer.encode(token, add_special_tokens=False)
    assert len(ids) == 1, ids
    copy = shutil.copytree(folder, tmp_path / f"{folder.name}_{token}")
    config = json.loads((copy / "generation_config.json").read_text())
    config["sequence_bias"] = [[ids, 100.0]]
    (copy / "generation_config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_generated_text_is_parsed(folders, tmp_path, family):
    plain = MLLMJudge.from_pretrained(folders[family])
    four = MLLMJudge.from_pretrained(_biased_copy(folders[family], tmp_path, plain, "4"), max_new_tokens=1)
    result = four.score(IMAGES, TITLES)
    assert [parse_score(a) for a in result.answers] == [4, 4, 4]
    np.testing.assert_array_equal(result.scores, [4.0, 4.0, 4.0])
    assert result.unparseable == 0 and result.mean == 4.0
    seven = MLLMJudge.from_pretrained(_biased_copy(folders[family], tmp_path, plain, "7"), max_new_tokens=1)
    result = seven.score(IMAGES, TITLES)
    assert [a.startswith("7") for a in result.answers] == [True] * 3  # answered, but out of range: not a score
    assert np.isnan(result.scores).all() and result.unparseable == 3 and np.isnan(result.mean)


def test_bad_inputs_name_the_argument(folders):
    judge = MLLMJudge.from_pretrained(folders["llava"])
    with pytest.raises(ValueError, match="images="):
        judge.score(IMAGES.astype(np.float32), TITLES)
    with pytest.raises(ValueError, match="images="):
        judge.score(IMAGES[..., :1], TITLES)
    with pytest.raises(ValueError, match="images="):
        judge.score(IMAGES[0], TITLES[:1])
    with pytest.raises(ValueError, match="images="):
        judge.score(list(IMAGES), TITLES)
    with pytest.raises(ValueError, match="titles has 2 entries but images has 3"):
        judge.score(IMAGES, TITLES[:2])
    with pytest.raises(ValueError, match="titles="):
        judge.score(IMAGES[:1], "Grim Curse")
    with pytest.raises(ValueError, match="titles="):
        judge.score(IMAGES[:1], None)
    with pytest.raises(ValueError, match="prompt="):
        MLLMJudge.from_pretrained(folders["llava"], prompt="Rate {name}")
    with pytest.raises(ValueError, match="batch_size=0"):
        MLLMJudge.from_pretrained(folders["llava"], batch_size=0)
