"""tfrec runtime: model versions, sessions, codecs and the protocol-free serving core."""
