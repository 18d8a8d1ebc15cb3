"""Residualized temporal sparse autoencoders for diffusion models: the library behind the app."""
