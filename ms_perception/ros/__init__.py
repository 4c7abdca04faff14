"""ROS 2 integration. ``params``, ``messages`` and ``logic`` are ROS-free (tested here with the real
message definitions from rosbags); ``detector_node`` is the thin rclpy wrapper, the only module
importing rclpy, message_filters and cv_bridge."""
