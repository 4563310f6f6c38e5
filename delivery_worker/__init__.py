"""delivery-worker: claims alert notification jobs from PostgreSQL and delivers them."""

__version__ = "0.1.0"
