"""The ICG model (docs/architecture.md §3) and the base-model zoo CoverWorld trains.

Owns: the pipelines per family (`pipeline*.py`, dispatch in `families.py`), MLLM meta tokens (`mllm.py`), the user
encoder and FiLM refiner, the adapters, the frozen CLIP embedder and LAION-layout aesthetic head, item features, the
trainable parameters as a module and as arrays (`trainable.py`), image conversions (`images.py`), and the tiny zoo's
build. May import: world (the zoo trains on its covers), data, paths, config, metrics, io.
"""
