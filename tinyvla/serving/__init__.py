"""Serving a policy over the network: `tinyvla serve` (server.py) and `tinyvla eval ws://...` (remote.py).

wire.py: msgpack + numpy arrays (openpi's format); protocol.py: what a request holds, per-connection state;
batching.py: one model thread decoding every client's requests in batches.
"""
