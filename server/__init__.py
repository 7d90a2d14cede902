"""tfrec transports (gRPC, REST) and the tfrec_model_server command line."""
