"""MatchGAN: semi-supervised StarGAN with a pair-matching loss (being written)."""
