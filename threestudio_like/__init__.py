"""threestudio-like: text-to-3D by score distillation, on any machine.

Kept light: importing a submodule does not import the rest. ``register`` adds a part;
``threestudio_like.experiment`` knows every part (``find_part``) and runs configs.
"""

from threestudio_like.registry import register

__version__ = "0.1.0"
__all__ = ["register", "__version__"]
