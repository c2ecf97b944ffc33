"""The asyncio shell around models/: Kafka in, predictions out."""

__version__ = "0.1.0"
