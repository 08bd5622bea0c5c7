"""icg_rl: personalized cover-image generation (ICG) trained with Ray-distributed multi-reward RL."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["ICGPipeline", "ICGUser", "__version__"]


def __getattr__(name: str):
    # lazy: `import icg_rl` stays cheap (no diffusers/transformers import) until the pipeline is asked for
    if name == "ICGPipeline":
        from icg_rl.models.pipeline import ICGPipeline

        return ICGPipeline
    if name == "ICGUser":
        from icg_rl.models.user import ICGUser

        return ICGUser
    raise AttributeError(f"module 'icg_rl' has no attribute {name!r}")
