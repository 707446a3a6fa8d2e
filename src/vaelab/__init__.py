"""vaelab: autoencoders and (β-)VAEs on MNIST-style images."""

__version__ = "0.1.0"
