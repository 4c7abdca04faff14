"""Export to the robot: ONNX with the model card embedded, parity and TensorRT-operator checks."""
