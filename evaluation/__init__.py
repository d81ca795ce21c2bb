"""Evaluation suite that reproduces the paper's tables (FID, patch-FID, CLIP score, SSIM, PSNR)."""
