"""The OpenAI wire format as pydantic models."""
