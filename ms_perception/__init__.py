"""ms_perception: multispectral (visible + thermal) perception for ROS 2."""
__version__ = "0.1.0"
