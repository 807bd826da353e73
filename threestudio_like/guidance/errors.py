"""The error of a missing diffusion model, shared by the loader (``models``) and the MVDream
converter (``convert_mvdream``), which the loader imports: here, neither imports the other for it."""


class ModelNotFoundError(FileNotFoundError):
    """A diffusion model (or one of its parts) is not on this machine; the message says how to get it."""
