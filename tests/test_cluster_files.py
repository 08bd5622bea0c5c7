import copy
import json
import subprocess
import sys

import pytest
import yaml

from icg_rl.config import load_config
from tests.conftest import ROOT


def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    spec = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    env = RuntimeEnv(**spec)  # Ray's own validation of the fields
    assert env["working_dir"] == "." and ".venv/" in spec["excludes"] and "artifacts/" in spec["excludes"]


PINNED_RAY = "2.60.0"
LAUNCHERS = sorted((ROOT / "cluster" / "launcher").glob("*.yaml"))
KUBERAY = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "cluster" / "kuberay").glob("*.yaml")}


def test_the_pin_is_the_installed_ray():
    import ray

    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"ray[train,data,serve]=={PINNED_RAY}"' in pyproject and ray.__version__ == PINNED_RAY


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_configs_pass_rays_schema_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs: defaults filled, then the schema
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # no work scheduled on the head
    assert any("--num-cpus=0" in c for c in config["head_start_ray_commands"])
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert workers and all(t["min_workers"] == 0 for t in workers)
    assert PINNED_RAY in config["docker"]["image"]
    assert any("pip install" in c and "icg_rl" in c for c in config["setup_commands"])


def test_launcher_schema_validation_catches_a_bad_key():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(LAUNCHERS[0].read_text())
    config["available_node_types"][config["head_node_type"]]["instance_typo"] = "m5.large"
    with pytest.raises(Exception, match="instance_typo"):
        validate_config(prepare_config(config))


def cluster_specs():
    yield "raycluster", KUBERAY["raycluster"]["spec"]
    yield "rayjob", KUBERAY["rayjob"]["spec"]["rayClusterSpec"]
    yield "rayservice", KUBERAY["rayservice"]["spec"]["rayClusterSpec"]


def test_kuberay_clusters_autoscale_gpus_from_zero_on_the_pinned_version():
    assert set(KUBERAY) == {"raycluster", "rayjob", "rayservice"}
    for name, spec in cluster_specs():
        assert spec["rayVersion"] == PINNED_RAY, name
        assert spec["enableInTreeAutoscaling"] is True, name
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", name
        gpu = [g for g in spec["workerGroupSpecs"]
               if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
        assert gpu and all(g["minReplicas"] == 0 for g in gpu), name


def test_rayjob_runs_training_and_cleans_up():
    from ray.runtime_env import RuntimeEnv

    spec = KUBERAY["rayjob"]["spec"]
    assert spec["entrypoint"].startswith("python -m icg_rl.train --config configs/")
    config = spec["entrypoint"].split("--config ")[1].split()[0]
    load_config(ROOT / config)  # the config the job names exists and validates
    assert spec["shutdownAfterJobFinishes"] is True and spec["entrypointNumCpus"] >= 1
    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))


def test_rayservice_serve_config_is_exactly_the_repository_file():
    from ray.serve.schema import ServeDeploySchema

    service = KUBERAY["rayservice"]
    source = ROOT / service["metadata"]["annotations"]["icg-rl/serve-config"]
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load(source.read_text()), (
        f"cluster/kuberay/rayservice.yaml serveConfigV2 drifted from {source.name}: paste that file's content under "
        f"serveConfigV2 again")
    ServeDeploySchema.model_validate(embedded)


ALL_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "serve" not in p.parts)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_training_config_loads_and_validates(path):
    cfg = load_config(path)
    assert cfg.model.base and cfg.train.iterations >= 1


def test_real_model_placements_fit_their_clusters():
    """1 node × 8 GPUs: the whole plan fits 8 GPUs; the SDXL and SD3.5-Medium variants too."""
    from icg_rl.distributed.placement import run_requests, shortfall

    for name in ("sd15_qwen2vl.yaml", "sdxl_qwen2vl.yaml", "sd35m_qwen2vl.yaml"):
        cfg = load_config(ROOT / "configs" / "real" / name)
        requests = run_requests(cfg, list(cfg.reward.weights))
        gpus = sum(q.count * q.gpus for q in requests.values())
        assert gpus == pytest.approx(8.0), (name, gpus)
        assert shortfall(requests, {"CPU": 96, "GPU": 8}) is None, name
        assert shortfall(requests, {"CPU": 96, "GPU": 7}) is not None, name
    multinode = load_config(ROOT / "configs" / "real" / "sd15_qwen2vl_multinode.yaml")
    assert multinode.ray.rollout_workers == "auto" and multinode.ray.resource_wait_s > 0
    assert multinode.model.mllm == load_config(ROOT / "configs" / "real" / "sd15_qwen2vl.yaml").model.mllm


def test_check_paths_reports_every_missing_path_at_once(tmp_path):
    from icg_rl.commands.check_paths import check_paths

    cfg = load_config(ROOT / "configs" / "real" / "sd15_qwen2vl.yaml",
                      ["model.mllm=Qwen/Qwen2-VL-2B-Instruct", f"reward.clip={tmp_path}"])
    problems, notes = check_paths(cfg)
    assert any(p.startswith("model.base: /models/stable-diffusion-v1-5") for p in problems)
    assert any(p.startswith("reward.aesthetic_head:") for p in problems) and len(problems) >= 7
    assert not any(p.startswith(("reward.clip", "model.mllm")) for p in problems)  # exists / a hub id
    assert any("model.mllm: 'Qwen/Qwen2-VL-2B-Instruct'" in n and "hub id" in n for n in notes)
    result = subprocess.run([sys.executable, "-m", "icg_rl.train", "--config", "configs/real/sd15_qwen2vl.yaml",
                             "--check-paths"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "path(s) missing" in result.stderr and "data.path" in result.stderr
    ok = subprocess.run([sys.executable, "-m", "icg_rl.train", "--config", "configs/micro.yaml", "--check-paths"],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert ok.returncode == 0 and "every local path exists" in ok.stdout


def test_check_paths_checks_the_base_folder_its_family_loads(tmp_path):
    """A local model.base is checked against its model_index.json: a supported family, every listed component."""
    from icg_rl.commands.check_paths import check_paths

    def problems_for(index: dict | None, subfolders: tuple[str, ...]) -> list[str]:
        folder = tmp_path / f"base{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        for name in subfolders:
            (folder / name).mkdir()
        if index is not None:
            (folder / "model_index.json").write_text(json.dumps(index))
        cfg = load_config(ROOT / "configs" / "micro.yaml", [f"model.base={folder}"])
        return [p for p in check_paths(cfg)[0] if p.startswith("model.base")]

    xl = {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
          "image_encoder": [None, None], "feature_extractor": [None, None],
          **{name: ["diffusers", "X"] for name in ("unet", "vae", "scheduler")},
          **{name: ["transformers", "X"] for name in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")}}
    present = ("unet", "vae", "scheduler", "text_encoder", "tokenizer", "tokenizer_2")
    assert problems_for(xl, (*present, "text_encoder_2")) == []
    (missing,) = problems_for(xl, present)
    assert "text_encoder_2" in missing and "model_index.json" in missing
    sd15 = {"_class_name": "StableDiffusionPipeline", "safety_checker": ["stable_diffusion", "X"],
            **{name: ["diffusers", "X"] for name in ("unet", "vae", "scheduler", "text_encoder", "tokenizer")}}
    assert problems_for(sd15, ("unet", "vae", "scheduler", "text_encoder", "tokenizer")) == []  # no safety checker
    (unknown,) = problems_for({"_class_name": "FluxPipeline", "transformer": ["diffusers", "X"]}, ("transformer",))
    assert "FluxPipeline" in unknown and "StableDiffusion3Pipeline" in unknown
    (no_index,) = problems_for(None, ("unet",))
    assert "no model_index.json" in no_index


def test_config_extends_merges_sections_and_catches_cycles(tmp_path):
    from icg_rl.config import ConfigError

    (tmp_path / "a.yaml").write_text("extends: b.yaml\nalgo: {lr: 0.5}\n")
    (tmp_path / "b.yaml").write_text("algo: {name: backprop, lr: 0.1}\ntrain: {iterations: 7}\n")
    cfg = load_config(tmp_path / "a.yaml")
    assert (cfg.algo.name, cfg.algo.lr, cfg.train.iterations) == ("backprop", 0.5, 7)
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_check_paths_takes_a_preference_model_folder_or_the_out_folder_holding_it(tmp_path):
    from icg_rl.commands.check_paths import check_paths

    def problems_for(folder) -> list[str]:
        cfg = load_config(ROOT / "configs" / "micro.yaml", [f"reward.preference={folder}"])
        return [p for p in check_paths(cfg)[0] if p.startswith("reward.preference")]

    (tmp_path / "model").mkdir()
    (problem,) = problems_for(tmp_path)  # a --out folder whose model/ has no config.json yet
    assert "its model/ is empty" in problem and "python -m icg_rl.preference --out DIR" in problem
    (tmp_path / "model" / "config.json").write_text("{}")
    assert problems_for(tmp_path) == problems_for(tmp_path / "model") == []
