"""Losses (METHODS.md §1, §4): focal, balanced L1, Dice, cross-entropy with ignore."""
from ms_perception_training.losses.detection import balanced_l1_loss, dice_loss, sigmoid_focal_loss, smooth_l1_loss  # noqa: F401
