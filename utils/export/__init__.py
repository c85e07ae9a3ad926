"""Deployment exports beyond the plain graph: INT8 ONNX (ONNX Runtime), OpenVINO FP32/INT8, and their calibration."""
