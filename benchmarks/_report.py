"""What every benchmark writes next to its figures (machine, date, JSON file), and the
comma-separated list arguments their command lines share.

Holds no measurement of its own and never reads patient or cohort data.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def int_list(text: str) -> list[int]:
    """argparse type: "24,48" -> [24, 48]; an empty string is an empty list."""
    return [int(a) for a in text.split(",") if a.strip()]


def float_list(text: str) -> list[float]:
    """argparse type: "1,40.5" -> [1.0, 40.5]; an empty string is an empty list."""
    return [float(a) for a in text.split(",") if a.strip()]


def machine() -> dict[str, str]:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def write_result(name: str, body: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write {benchmark, date, machine, **body} as JSON to `out`; return the document."""
    doc = {"benchmark": name, "date": datetime.now(timezone.utc).isoformat(),
           "machine": machine(), **body}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc
