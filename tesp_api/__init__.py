"""tesp-api: a GA4GH TES 1.1 server that runs tasks on Galaxy Pulsar."""

__version__ = "1.0.0.dev0"
