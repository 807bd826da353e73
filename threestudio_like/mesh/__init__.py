"""Triangle and tetrahedral meshes: rasterization, marching tetrahedra, mesh regularisers."""
