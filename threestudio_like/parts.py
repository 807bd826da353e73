"""Imports every module that registers a part, so ``find`` sees them all."""

# isort: off
from threestudio_like.representations import encodings, networks, implicit_volume  # noqa: F401
from threestudio_like.representations import tetrahedra_sdf_grid  # noqa: F401
from threestudio_like import materials, backgrounds  # noqa: F401
from threestudio_like.renderers import volume_renderer, mesh_renderer, patch_renderer  # noqa: F401
from threestudio_like.data import random_camera, random_multiview, capture  # noqa: F401
from threestudio_like.guidance import prompt_processor, sds, vsd, multiview, instructpix2pix  # noqa: F401
from threestudio_like.systems import dreamfusion, magic3d, prolificdreamer, mvdream, reconstruction, instructnerf2nerf  # noqa: F401
from threestudio_like.export import exporter  # noqa: F401
