"""threestudio-like: text-to-3D by score distillation, on any machine."""

from threestudio_like.registry import find, register, registered_names

__version__ = "0.1.0"
__all__ = ["find", "register", "registered_names", "__version__"]
