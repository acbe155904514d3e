"""Generated protobuf/gRPC modules (`make protos`); only the .proto sources are tracked."""
