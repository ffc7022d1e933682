"""Engines that run models: ONNX Runtime encoders here; llama.cpp beside them."""
