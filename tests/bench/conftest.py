"""The benchmark lives in the top-level ``bench`` folder, which is not part of the installed
package: make it importable however pytest was started; and this folder, for the tests' shared
``tiny_model``."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
