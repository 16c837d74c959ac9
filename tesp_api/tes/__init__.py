"""The TES domain: models, states, validation and views. Pure: no I/O, no web framework."""
