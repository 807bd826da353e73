"""3D representations (geometry) and the encodings / networks they are built from."""
