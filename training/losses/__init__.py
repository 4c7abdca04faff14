"""Distillation and auxiliary losses (``distill.py``); the task losses live with the objective
(``ms_perception_training.objectives``)."""
