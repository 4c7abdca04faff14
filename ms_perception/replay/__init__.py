"""Replay rosbag2 recordings (.mcap, .db3) through the pipeline without a ROS install."""
