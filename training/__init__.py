"""Training UPLiFT latent upscalers with accelerate (run `python -m training.train_uplift` from the repository root)."""
