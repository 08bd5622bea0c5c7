"""The checkpoint's model card (distributed/model_card.py): front matter a hub reads, sections a person reads, written
atomically beside the weights with the run's sample grid. The end-to-end check (a real run's checkpoint holds both
and still loads) is in tests/test_cli_output.py."""

import yaml

from icg_rl.config import load_config
from icg_rl.distributed.model_card import render_model_card, write_model_card
from tests.conftest import MICRO_CONFIG

SUMMARY = {"iterations": 3, "checkpoint": "/runs/x/checkpoint", "samples": "/runs/x/samples.png",
           "eval": {"aesthetic": 5.123456, "clip_t": 0.25},
           "oracle": {"ctr_icg": 0.39412, "ctr_reference": 0.281, "ab_p_value": 2.4e-12}}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def rows(card: str) -> set[str]:
    return {line for line in card.splitlines() if line.startswith("|")}


def test_backprop_card_names_models_rewards_algorithm_data_and_numbers(tmp_path):
    cfg = load_config(MICRO_CONFIG, [f"world.dir={tmp_path}/world", "algo.name=backprop", "algo.backprop_steps=2",
                                     "algo.lr=1e-4", "reward.floors.clip_t=0.95", "train.average_last=0.5",
                                     "model.mllm=/models/qwen2-vl"])
    card = render_model_card(cfg, SUMMARY)
    meta = front_matter(card)
    assert meta["base_model"] == f"{tmp_path}/world/models/sd" and meta["library_name"] == "icg_rl"
    assert {"text-to-image", "diffusers", "rl-backprop", "coverworld"} <= set(meta["tags"])
    for section in ("## How to use", "## Model", "## Rewards", "## Training", "## Data", "## Evaluation",
                    "## CoverWorld oracle", "## Files"):
        assert f"\n{section}" in card, section
    assert {"| MLLM | /models/qwen2-vl |", "| clip_t | 0.5 | 0.95 |", "| aesthetic | 1 | — |",
            "| learning rate | 0.0001 |", "| iterations | 3 |", "| inference steps (DDIM) | 10 |",
            "| backprop steps K | 2 |",
            "| weights exported (`train.average_last`) | mean over the last 50% of updates |",
            "| kind | coverworld |", f"| path | {tmp_path}/world |", "| pairs per batch | 2 |",
            "| aesthetic | 5.123 |", "| ctr_icg | 0.3941 |", "| ab_p_value | 2.4e-12 |"} <= rows(card)
    assert "![held-out samples](samples.png)" in card
    assert "group size" not in card  # a policy-gradient setting, not reward backprop's


def test_grpo_card_names_its_group_size_and_leaves_out_what_the_run_did_not_produce(tmp_path):
    cfg = load_config(MICRO_CONFIG, [f"world.dir={tmp_path}", "algo.name=grpo", "data.samples_per_pair=4",
                                     "data.kind=movielens", "data.path=/data/ml-1m", "model.base=/models/sd15"])
    summary = {k: v for k, v in SUMMARY.items() if k not in ("oracle", "samples")}
    card = render_model_card(cfg, summary)
    assert front_matter(card)["base_model"] == "/models/sd15" and "movielens" in front_matter(card)["tags"]
    assert {"| group size (samples per pair) | 4 |", "| path | /data/ml-1m |", "| kind | movielens |"} <= rows(card)
    assert "## Evaluation" in card and "oracle" not in card.lower() and "samples.png" not in card


def test_write_model_card_puts_card_and_sample_grid_beside_the_weights(tmp_path):
    cfg = load_config(MICRO_CONFIG, [f"world.dir={tmp_path}/world"])
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "samples.png").write_bytes(b"\x89PNG fake grid")
    path = write_model_card(run / "checkpoint", cfg, SUMMARY | {"samples": str(run / "samples.png")},
                            samples=run / "samples.png")
    assert path == run / "checkpoint" / "README.md"
    assert (run / "checkpoint" / "samples.png").read_bytes() == b"\x89PNG fake grid"
    assert "![held-out samples](samples.png)" in path.read_text()
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == ["README.md", "samples.png"]  # no temp files

    alone = tmp_path / "alone"
    alone.mkdir()
    write_model_card(alone, cfg, SUMMARY, samples=tmp_path / "missing.png")  # no grid: the card must not point at one
    assert "samples.png" not in (alone / "README.md").read_text() and not (alone / "samples.png").exists()
