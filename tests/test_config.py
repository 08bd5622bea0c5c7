import os
import subprocess
import sys

import pytest

from icg_rl.config import Config, ConfigError, apply_override, describe_fields, load_config
from tests.conftest import MICRO_CONFIG, ROOT


def test_default_and_micro_configs_load():
    default = load_config()
    assert isinstance(default, Config)
    assert default.data.kind == "coverworld"
    micro = load_config(MICRO_CONFIG)
    assert micro.world.num_genres == 4 and micro.world.items_per_genre == 8


def test_dotted_overrides_parse_values_as_yaml():
    cfg = load_config(MICRO_CONFIG, ["algo.lr=1e-4", "world.seed=7", "ray.address=null", "train.tracker=none"])
    assert cfg.algo.lr == pytest.approx(1e-4)
    assert cfg.world.seed == 7 and cfg.ray.address is None and cfg.train.tracker == "none"


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError) as err:
        load_config(MICRO_CONFIG, ["algo.learning_rat=1e-4", "world.num_genre=3"])
    message = str(err.value)
    assert "algo.learning_rat: unknown key" in message
    assert "did you mean 'world.num_genres'" in message


def test_wrong_type_names_key_value_and_allowed():
    with pytest.raises(ConfigError) as err:
        load_config(MICRO_CONFIG, ["world.num_users=lots"])
    assert "world.num_users: got 'lots'" in str(err.value)
    assert "integer" in str(err.value)


def test_out_of_range_and_literal_choices():
    with pytest.raises(ConfigError) as err:
        load_config(MICRO_CONFIG, ["world.num_genres=9", "algo.name=ppo", "world.image_size=48"])
    message = str(err.value)
    assert "world.num_genres: got 9; input should be less than or equal to 8" in message
    assert "algo.name: got 'ppo'" in message and "'ddpo', 'grpo', 'backprop' or 'nft'" in message
    assert "world.image_size: got 48" in message and "32 or 64" in message


def test_policy_gradient_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError) as err:
        load_config(MICRO_CONFIG, ["algo.name=grpo", "data.samples_per_pair=1"])
    assert "algo.name=grpo needs data.samples_per_pair >= 2" in str(err.value) and "got 1" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(MICRO_CONFIG, ["algo.sde_window=[2, 12]", "algo.num_inference_steps=10"])
    assert "algo.sde_window [2, 12] must satisfy 0 <= start < stop <= algo.num_inference_steps (10)" in str(err.value)
    with pytest.raises(ConfigError, match="sde_window is for the policy-gradient algorithms"):
        load_config(MICRO_CONFIG, ["algo.name=backprop", "algo.sde_window=[0, 2]"])
    cfg = load_config(MICRO_CONFIG, ["algo.name=grpo", "algo.sde_window=[0, 2]", "algo.advantage_std=batch"])
    assert cfg.algo.sde_window == (0, 2) and cfg.algo.advantage_std == "batch"


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        apply_override({}, "algo.lr")
    with pytest.raises(ConfigError, match="world.seed is a value, not a section"):
        apply_override({"world": {"seed": 1}}, "world.seed.x=2")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_every_field_is_described():
    rows = describe_fields()
    assert len(rows) > 40
    undocumented = [key for key, _, description in rows if not description]
    assert not undocumented, f"fields without a description: {undocumented}"


def test_cli_bad_config_exits_2_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "icg_rl.world", "build", "--config", str(MICRO_CONFIG),
                           "--out", str(tmp_path / "w"), "world.num_genre=3"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "world.num_genre: unknown key; did you mean 'world.num_genres'" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_configuration_reference_is_current():
    from icg_rl.config.reference import TARGET, reference

    assert TARGET.read_text(encoding="utf-8") == reference(), (
        "docs/configuration.md is stale: run `python -m icg_rl.config.reference --write`")
    for section in ("world", "ray", "evaluation", "limits"):
        assert f"`{section}" in reference() or f"**`{section}`**" in reference()


def test_commands_keep_the_builtin_print_when_ray_draws_progress_bars():
    """Ray's driver-side bars would swap builtins.print for a bar-redrawing print (seen deadlocking after Ray
    Train); importing our CLI module turns that off unless the user asked for it."""
    probe = ("import builtins, icg_rl.commands.common; from ray.experimental import tqdm_ray; before = builtins.print; "
             "tqdm_ray.instance(); print(builtins.print is before)")
    kept = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert kept.stdout.strip().splitlines()[-1] == "True", kept.stderr
    env = dict(os.environ, RAY_TQDM_PATCH_PRINT="1")  # a user's explicit choice wins
    patched = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert patched.stdout.strip().splitlines()[-1] == "False", patched.stderr
