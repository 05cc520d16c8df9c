"""Command-line tools that come with mlx-router; each runs as ``python helper_tools/<tool>.py``."""
