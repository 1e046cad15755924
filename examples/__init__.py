"""Small example models defined in code, used by the demo, the tests and the benchmarks.

Each module has ``build() -> torch.nn.Module`` (a factory that ``inferstack export`` accepts as
``inferstack.examples.<module>:build``) and ``INPUTS``, the ``--input`` specs that export it.
"""
