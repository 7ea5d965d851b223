import os

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.environ.get("BLOCKLINK_VECTORS", os.path.join(HERE, "vectors"))
