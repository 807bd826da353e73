"""Mesh export: isosurface extraction, the Mesh record, OBJ / GLB writers."""

from threestudio_like.export.isosurface import EmptyIsosurfaceError, extract_isosurface
from threestudio_like.export.mesh import Mesh
from threestudio_like.export.writers import write_glb, write_obj

__all__ = ["EmptyIsosurfaceError", "Mesh", "extract_isosurface", "write_glb", "write_obj"]
