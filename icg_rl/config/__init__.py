"""Configuration: typed pydantic sections, YAML files with `extends` and dotted overrides, the serve app's settings,
and the generated reference (docs/configuration.md).

Owns: every setting's name, type, default and description. Imports nothing of icg_rl (the bottom layer): every other
package reads its settings from here.

    sections.py   the training tree (`Config`: world, zoo, data, model, reward, preference, algo, train, evaluation)
    runtime.py    the Ray sections (ray, rollout, learner)
    evaluation.py the evaluation section (arms, LPIPS, the MLLM judge)
    serve.py      the Serve app's arguments (`ServeSettings`: policies, experiments, limits, batching)
    files.py      reading YAML (`extends`), merging, dotted overrides, `ConfigError`
    reference.py  `python -m icg_rl.config.reference --write` rewrites docs/configuration.md
"""

from icg_rl.config.evaluation import EvaluationConfig, JudgeConfig, LPIPSConfig
from icg_rl.config.files import ConfigError, Section, apply_override, read_tree
from icg_rl.config.runtime import LearnerConfig, RayConfig, RolloutConfig
from icg_rl.config.sections import (
    DEFAULT_CONFIG,
    AlgoConfig,
    Config,
    DataConfig,
    LoraConfig,
    ModelConfig,
    PreferenceConfig,
    RewardConfig,
    TrainConfig,
    WorldConfig,
    ZooConfig,
    describe_fields,
    load_config,
    section_hash,
    validate,
)

__all__ = [
    "DEFAULT_CONFIG", "AlgoConfig", "Config", "ConfigError", "DataConfig", "EvaluationConfig", "JudgeConfig",
    "LPIPSConfig", "LearnerConfig", "LoraConfig", "ModelConfig", "PreferenceConfig", "RayConfig", "RewardConfig",
    "RolloutConfig", "Section", "TrainConfig", "WorldConfig", "ZooConfig", "apply_override", "describe_fields",
    "load_config", "read_tree", "section_hash", "validate",
]
