"""The serve config file, the settings' validation, the quick-start command and the image guards (no server)."""

from __future__ import annotations

import base64
import io
import subprocess
import sys

import numpy as np
import pydantic
import pytest
import yaml
from PIL import Image

from icg_rl.config.serve import Batching, ServeSettings
from icg_rl.serve.images import BadImage, decode_reference_image, encode_image
from tests.conftest import ROOT

SERVE_CONFIGS = sorted((ROOT / "configs" / "serve").glob("*.yaml"))


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_configs_pass_rays_schema_and_ours(path):
    from ray.serve.schema import ServeDeploySchema

    from icg_rl.commands.serve import load_serve_config
    from icg_rl.serve.app import build_app

    raw = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(raw)  # what `serve deploy` and KubeRay's serveConfigV2 accept
    app = load_serve_config(path)
    module, _, name = app["import_path"].partition(":")
    assert (module, name) == ("icg_rl.serve.app", "build_app") and build_app.__name__ == name
    ServeSettings.model_validate(app["args"])  # the builder's own validation
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {"CoverGenerator", "CoverAPI"}
    generator = deployments["CoverGenerator"]
    batching = Batching.model_validate(generator["user_config"])
    assert generator["max_ongoing_requests"] >= batching.max_batch_size  # else @serve.batch never fills
    assert {"min_replicas", "max_replicas", "target_ongoing_requests"} <= set(generator["autoscaling_config"])


def test_bad_settings_name_the_field():
    with pytest.raises(pydantic.ValidationError, match=r"limits\.max_num_images"):
        ServeSettings.model_validate({"checkpoint": "x", "limits": {"max_num_images": 0}})
    with pytest.raises(pydantic.ValidationError, match="unknown_knob"):
        ServeSettings.model_validate({"checkpoint": "x", "unknown_knob": 1})


def test_load_serve_config_names_the_file(tmp_path):
    from icg_rl.commands.serve import load_serve_config
    from icg_rl.config import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("applications:\n  - name: icg\n    import_path: 42\n    bogus: true\n")
    with pytest.raises(ConfigError, match="bad.yaml: not a valid Ray Serve config"):
        load_serve_config(bad)


def test_cli_help_and_missing_checkpoint():
    shown = subprocess.run([sys.executable, "-m", "icg_rl.serve", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "--checkpoint" in shown.stdout and "curl" in shown.stdout
    missing = subprocess.run([sys.executable, "-m", "icg_rl.serve", "--checkpoint", "/nonexistent/ckpt"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "--checkpoint: /nonexistent/ckpt is not a folder" in missing.stderr


def test_reference_image_guards():
    pixels = (np.arange(12 * 10 * 3) % 256).astype(np.uint8).reshape(12, 10, 3)
    assert np.array_equal(decode_reference_image(encode_image(pixels), 1000), pixels)
    assert decode_reference_image("data:image/png;base64," + encode_image(pixels), 1000).shape == (12, 10, 3)
    assert decode_reference_image(encode_image(pixels, "JPEG"), 1000).shape == (12, 10, 3)
    with pytest.raises(BadImage, match="10×12 = 120 pixels exceeds the limit of 100"):
        decode_reference_image(encode_image(pixels), 100)
    with pytest.raises(BadImage, match="path or URL"):
        decode_reference_image("s3://bucket/cover.png", 1000)
    png = base64.b64decode(encode_image(pixels))
    with pytest.raises(BadImage, match="not a readable PNG or JPEG"):
        decode_reference_image(base64.b64encode(png[: len(png) // 2]).decode(), 1000)  # truncated
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="GIF")
    with pytest.raises(BadImage, match="not a readable PNG or JPEG"):
        decode_reference_image(base64.b64encode(buffer.getvalue()).decode(), 1000)
    with pytest.raises(BadImage, match="empty image"):
        decode_reference_image("", 1000)


def test_policies_and_experiments_are_validated_naming_the_field():
    one = ServeSettings.model_validate({"checkpoint": "ckpt"})
    assert one.policy_checkpoints() == {"default": "ckpt"} and one.default_policy == "default"
    many = ServeSettings.model_validate({"policies": {"b": "x", "a": "y"}, "experiments": {"t": {"a": 1, "b": 3}}})
    assert list(many.policy_checkpoints()) == ["b", "a"] and many.default_policy == "b"  # the first, as written
    cases = [({"checkpoint": "x", "policies": {"a": "y"}}, "checkpoint, policies: give exactly one"),
             ({}, "checkpoint, policies: give exactly one"),
             ({"policies": {"bad name": "x"}}, "policies: 'bad name' is not a valid name"),
             ({"policies": {"a": "x"}, "experiments": {"t": {"z": 1.0}}},
              r"experiments\.t\.z: no such policy; policies are \['a'\]"),
             ({"policies": {"a": "x"}, "experiments": {"t": {"a": 0.0}}}, r"experiments\.t\.a: weight 0\.0"),
             ({"policies": {"a": "x"}, "experiments": {"t": {}}}, r"experiments\.t: no arms"),
             ({"policies": {"a": "x"}, "max_policies_per_replica": 0}, "max_policies_per_replica")]
    for args, message in cases:
        with pytest.raises(pydantic.ValidationError, match=message):
            ServeSettings.model_validate(args)


def test_cli_policy_flags():
    from icg_rl.commands.serve import app_args, policy_flags
    from icg_rl.config import ConfigError

    assert policy_flags(["a=/x", "b=/y"]) == {"a": "/x", "b": "/y"}
    for bad, message in ((["a"], "is not NAME=PATH"), (["a=/x", "a=/y"], "given twice")):
        with pytest.raises(ConfigError, match=message):
            policy_flags(bad)
    config = {"args": {"policies": {"p": "/a"}, "experiments": {"t": {"p": 1.0}}, "default_steps": 5}}
    assert app_args(config, checkpoint="/c") == {"checkpoint": "/c", "default_steps": 5}  # one policy: no A/B
    assert app_args(config, policies={"q": "/b"})["policies"] == {"q": "/b"}
    assert app_args(config) == config["args"]
    both = subprocess.run([sys.executable, "-m", "icg_rl.serve", "--checkpoint", "/a", "--policy", "p=/b"],
                          capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
