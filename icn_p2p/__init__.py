"""icn-p2p: a peer-to-peer compute node for cooperatives."""

__version__ = "0.1.0"
