"""The C++ gRPC floor of the overhead bench: `floor.cc` and its build helper `build.py`."""
