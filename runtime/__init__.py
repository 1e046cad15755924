"""The serving runtime: one process serves one model package with onnxruntime over the
Open Inference Protocol (KServe v2)."""
