"""Few-shot SMIS: semantic masks to photos with a StyleGAN2 prior (being written)."""
