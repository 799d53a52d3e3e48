"""Measuring images and gaze: scores (SSIM, PSNR, L1, LPIPS, FID), the networks they need (VGG16, Inception)
and the gaze estimator network that reads gaze and head pose. Apart from models/: nothing here is LiveGaze."""
