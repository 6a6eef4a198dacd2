"""fsgan_fast.models."""
