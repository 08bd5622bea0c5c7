"""The start-up check that policies can share one base (no server), and the A/B split's arithmetic."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from icg_rl.serve.experiments import choose_arm, split_key
from icg_rl.serve.policies import read_policies


def variant(checkpoint, tmp_path, name: str, **config_changes):
    """A copy of `checkpoint` whose icg_config.json has `config_changes`."""
    folder = tmp_path / name
    shutil.copytree(checkpoint, folder)
    config = json.loads((folder / "icg_config.json").read_text())
    (folder / "icg_config.json").write_text(json.dumps(config | config_changes))
    return folder


def test_policies_over_another_base_or_layout_are_refused_naming_policy_and_field(micro_checkpoint, tmp_path):
    checkpoint = micro_checkpoint[0]
    same = variant(checkpoint, tmp_path, "same", user_id_init_std=0.1)  # an init-only setting may differ
    infos = read_policies({"a": str(checkpoint), "b": str(same)})
    assert list(infos) == ["a", "b"] and infos["a"].model_version == infos["b"].model_version

    other_base = variant(checkpoint, tmp_path, "base", base=str(tmp_path / "another_sd"))
    with pytest.raises(ValueError, match=r"policies\.b: base \(from .*icg_config\.json\) is '.*another_sd', but the "
                                         r"first policy 'a' has"):
        read_policies({"a": str(checkpoint), "b": str(other_base)})
    assert read_policies({"a": str(checkpoint), "b": str(other_base)}, base="/shared/sd")["b"].config["base"] == \
        "/shared/sd"  # one configured base for all: the checkpoints' own paths no longer matter

    wider = variant(checkpoint, tmp_path, "wider", meta_tokens=8)
    with pytest.raises(ValueError, match=r"policies\.c: icg_config\.json's meta_tokens is 8, but the first policy "
                                         r"'a' has 4; policies served together share one base, MLLM and ICG layout"):
        read_policies({"a": str(checkpoint), "c": str(wider)})
    with pytest.raises(FileNotFoundError, match=r"policies\.d: .* has no icg\.safetensors"):
        read_policies({"a": str(checkpoint), "d": str(tmp_path)})


def test_arms_are_stable_and_split_by_weight():
    arms = {"control": 3.0, "treatment": 1.0}
    keys = [split_key(f"user-{i}", seed=0) for i in range(20_000)]
    chosen = [choose_arm("exp", arms, key) for key in keys]
    assert chosen == [choose_arm("exp", arms, key) for key in keys]  # a pure function of (experiment, user)
    n, share = len(keys), 0.25
    assert abs(chosen.count("treatment") - n * share) <= 4 * math.sqrt(n * share * (1 - share))
    other = [choose_arm("another", arms, key) for key in keys]
    agree = sum(a == b for a, b in zip(chosen, other)) / n  # independent splits: 0.75² + 0.25² = 0.625
    assert abs(agree - 0.625) < 0.02
    assert split_key(None, seed=7) == "seed:7" and split_key("u1", seed=7) == "user:u1"
    assert {choose_arm("exp", {"only": 1.0}, key) for key in keys[:100]} == {"only"}
