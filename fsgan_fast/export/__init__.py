"""fsgan_fast.export."""
