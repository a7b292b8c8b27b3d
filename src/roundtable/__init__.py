"""roundtable: a distributed group chat of LLM agents on AutoGen's gRPC runtime."""

__version__ = "0.1.0"

import os as _os

# gRPC's C core logs to stderr on its own (an address it cannot bind, say) before and beside
# our one-line errors. Quiet unless the user asked for its logs; must precede any grpc import.
_os.environ.setdefault("GRPC_VERBOSITY", "NONE")
