"""One module per endpoint on top of the generation service."""
