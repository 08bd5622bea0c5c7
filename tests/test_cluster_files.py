import yaml

from tests.conftest import ROOT


def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    spec = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    env = RuntimeEnv(**spec)  # Ray's own validation of the fields
    assert env["working_dir"] == "." and ".venv/" in spec["excludes"] and "artifacts/" in spec["excludes"]
