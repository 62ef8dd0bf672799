"""Paper 1's pipeline: GAN -> synthetic pairs -> UNet -> real test set."""
