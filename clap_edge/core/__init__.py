"""core: the torch-free base every room may use (errors, atomic io, images, datasets, metrics, reports)."""
