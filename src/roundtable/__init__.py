"""roundtable: a distributed group chat of LLM agents on AutoGen's gRPC runtime."""

__version__ = "0.1.0"
