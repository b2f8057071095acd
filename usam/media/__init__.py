"""Pictures and video measures that training and evaluation share: frame strips, GIF/MP4 grids, panels,
per-video metrics (PSNR, SSIM, flicker) and perceptual distances (LPIPS on local weights, or the domain one).

May import: errors, paths, files, config, data, models, artifacts.
"""
