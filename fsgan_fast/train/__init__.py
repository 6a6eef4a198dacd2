"""fsgan_fast.train."""
