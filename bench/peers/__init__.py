"""The servers inferstack is compared with. Each runs standalone (the Triton and KServe peers in
their own virtual environments), loads the same ONNX file with one intra-op thread and serves
``POST /v2/models/{name}/infer``."""
