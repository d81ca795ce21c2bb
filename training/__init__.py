"""Training UPLiFT latent upscalers with accelerate (run `python training/train_uplift.py`)."""
