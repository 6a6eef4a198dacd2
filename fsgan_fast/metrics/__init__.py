"""fsgan_fast.metrics."""
