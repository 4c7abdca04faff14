"""Offline training subpackage (PyTorch). Imported as ``ms_perception_training``; never by the runtime."""
