"""What every benchmark writes next to its figures: the machine, the date, the JSON file.

Holds no measurement of its own and never reads patient or cohort data.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


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
