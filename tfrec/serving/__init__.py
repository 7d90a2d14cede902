"""The serving core: requests, the protocol-free service, model versions and their lifecycle."""
