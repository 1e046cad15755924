"""Model tools: export a PyTorch model to ONNX, check parity, optimize, and package it."""
