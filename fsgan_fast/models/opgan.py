"""OP-GAN (ECCV 2020): CycleGAN with a self-supervised Siamese patch network (being written)."""
