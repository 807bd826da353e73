"""Camera math and camera data modules."""

from threestudio_like.data.cameras import (
    get_mvp_matrix,
    get_projection_matrix,
    get_ray_directions,
    get_rays,
    look_at_c2w,
    make_camera_batch,
    spherical_to_cartesian,
)

__all__ = [
    "get_mvp_matrix",
    "get_projection_matrix",
    "get_ray_directions",
    "get_rays",
    "look_at_c2w",
    "make_camera_batch",
    "spherical_to_cartesian",
]
