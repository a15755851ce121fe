"""zmqstore: a replicated key-value store over ZeroMQ with RocksDB storage."""
__version__ = "0.1.0"

from .client import Client, Retry  # noqa: E402
from .errors import ZmqstoreError  # noqa: E402

__all__ = ["Client", "Retry", "ZmqstoreError", "__version__"]
