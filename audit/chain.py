"""The chain and Merkle arithmetic, kept free of Django so an auditor can read it in one go.

chain_hash(n) = SHA-256("convoy-audit-v1" || 0x00 || chain_hash(n-1) || int64be(n) || sha256(body))
with chain_hash(0) = 32 zero bytes. Checkpoints carry the RFC 6962 Merkle tree hash of the
content hashes (sha256 of each body) in chain order.
"""

import hashlib
import json
import struct
from typing import Any

DOMAIN = b"convoy-audit-v1\x00"
GENESIS = bytes(32)
EMPTY_ROOT = hashlib.sha256(b"").digest()


def canonical_json(value: Any) -> str:
    """The one serialisation of an event body or a checkpoint statement (what gets hashed)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


def chain_hash(prev: bytes, seq: int, content: bytes) -> bytes:
    return hashlib.sha256(DOMAIN + prev + struct.pack(">q", seq) + content).digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class MerkleFrontier:
    """The roots of the perfect subtrees an RFC 6962 tree of `size` leaves splits into, largest
    first. Appending is amortised O(1) and the root of the whole tree is O(log n)."""

    __slots__ = ("size", "stack")

    def __init__(self, stack: list[tuple[int, bytes]] | None = None) -> None:
        self.stack = list(stack or [])
        self.size = sum(n for n, _ in self.stack)

    def append(self, data: bytes) -> None:
        stack = self.stack
        node, width = leaf_hash(data), 1
        while stack and stack[-1][0] == width:
            node = node_hash(stack.pop()[1], node)
            width *= 2
        stack.append((width, node))
        self.size += 1

    def extend(self, leaves: list[bytes]) -> None:
        """append() for many leaves at once: whole perfect subtrees are hashed level by level,
        about three times faster than one leaf at a time."""
        sha = hashlib.sha256
        i, n = 0, len(leaves)
        while i < n:
            # The widest perfect subtree that can start here: aligned to the size, all available.
            remaining = n - i
            width = (self.size & -self.size) if self.size else 1 << (remaining.bit_length() - 1)
            while width > remaining:
                width //= 2
            level = [sha(b"\x00" + d).digest() for d in leaves[i : i + width]]
            while len(level) > 1:
                pairs = zip(level[::2], level[1::2], strict=True)  # width is a power of two
                level = [sha(b"\x01" + a + b).digest() for a, b in pairs]
            node, merged = level[0], width
            while self.stack and self.stack[-1][0] == merged:
                node = node_hash(self.stack.pop()[1], node)
                merged *= 2
            self.stack.append((merged, node))
            self.size += width
            i += width

    def root(self) -> bytes:
        if not self.stack:
            return EMPTY_ROOT
        # RFC 6962 splits at the largest power of two below n, so the tree is the perfect
        # subtrees folded from the right.
        node = self.stack[-1][1]
        for _, left in reversed(self.stack[:-1]):
            node = node_hash(left, node)
        return node

    def to_json(self) -> list[list]:
        return [[n, h.hex()] for n, h in self.stack]

    @classmethod
    def from_json(cls, value: list) -> "MerkleFrontier":
        stack = [(int(n), bytes.fromhex(h)) for n, h in value]
        widths = [n for n, _ in stack]
        if any(n & (n - 1) or n <= 0 for n in widths) or widths != sorted(widths, reverse=True):
            raise ValueError("a Merkle frontier lists distinct powers of two, largest first")
        if len(set(widths)) != len(widths):
            raise ValueError("a Merkle frontier lists distinct powers of two, largest first")
        return cls(stack)


def merkle_root(leaves: list[bytes]) -> bytes:
    """The RFC 6962 tree hash, written as the RFC defines it (recursive), for tests and audits."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))
