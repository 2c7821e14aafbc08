import sys
from pathlib import Path

# Make the repository importable when pytest runs without an installed package (the project uses a plain venv).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
