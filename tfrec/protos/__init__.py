"""Protos TF-Serving's pip package lacks; `make generate` rebuilds the *_pb2.py files."""
