"""Pulsar backends: the port the engine uses (port.py) and its adapters (rest.py, amqp.py)."""
