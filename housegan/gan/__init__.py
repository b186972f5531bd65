"""Conditional GAN on (city, image type): data packing, models, training, checkpoints."""
