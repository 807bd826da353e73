"""Mesh export: OBJ / GLB writers; isosurface extraction re-exported from threestudio_like.mesh.isosurface
(the Mesh record is threestudio_like.mesh.types.Mesh)."""

from threestudio_like.mesh.isosurface import EmptyIsosurfaceError, extract_isosurface
from threestudio_like.export.writers import write_glb, write_obj

__all__ = ["EmptyIsosurfaceError", "extract_isosurface", "write_glb", "write_obj"]
