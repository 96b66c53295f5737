"""Data layer: finding images, checking them, splitting them, and turning them into tensors."""
