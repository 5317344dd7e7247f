"""Where a node's API listens unless told otherwise (shared by icnd and icnctl, import-light)."""

DEFAULT_RPC_HOST = "127.0.0.1"
DEFAULT_RPC_PORT = 7711
DEFAULT_NODE_URL = f"http://{DEFAULT_RPC_HOST}:{DEFAULT_RPC_PORT}"
#: Name of the bearer-token file inside a node's data directory.
TOKEN_FILE_NAME = "api-token"
