"""Task stores: the port (port.py) and one adapter per database."""
