"""Infrastructure with no TensorFlow: kill-safe writes, the encode cache, progress bars and
pseudonymous user ids."""
