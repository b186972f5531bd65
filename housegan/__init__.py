"""housegan: listing photos in S3 -> curated data -> a conditional GAN of houses per city."""

__version__ = "0.1.0"
