"""Text handling that depends on the model family: chat templates (later: tools, reasoning)."""
