"""fsgan_fast.data."""
