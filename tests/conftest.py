import os

os.environ.setdefault("HWNAS_PROGRESS", "0")
