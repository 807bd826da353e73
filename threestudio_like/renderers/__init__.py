"""Renderers: camera rays or rasterised views -> images (comp_rgb, opacity, depth, normals)."""
