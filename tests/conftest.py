import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
os.environ.setdefault("WAKESLEEP_DATA_DIR", str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))
os.environ.setdefault("MPLBACKEND", "Agg")
