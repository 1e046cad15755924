"""Session options for every onnxruntime session the model tools open.

onnxruntime logs a failed load or run on stderr itself (a coloured ``[E:onnxruntime:...]`` line,
at ERROR severity) before it raises; the tools report the exception in their own words, so only
FATAL messages are let through. Level 3 (ERROR) would still print the line.
"""

from __future__ import annotations

from typing import Any

#: onnxruntime's severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
QUIET = 4


def session_options(threads: int = 1) -> Any:
    """Quiet ``SessionOptions`` with ``threads`` intra-op threads (0: onnxruntime's default).

    Also lowers the default logger, which sessions opened by onnxruntime's own tools (the quantizers'
    calibration sessions) log through.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(QUIET)
    options = ort.SessionOptions()
    options.log_severity_level = QUIET
    options.intra_op_num_threads = threads
    return options
