"""SAS verification: two devices compare 7 emoji (or 3 numbers) to rule out a key swap.

Each side makes a fresh Curve25519 key for one exchange (named by ``txn``).
The initiator first sends only a commitment to its key, and reveals the key
after the responder's key arrived; the responder checks the revealed key
against the commitment. So neither side can pick its key after seeing the
other's, and a man in the middle has one guess at matching 7 emoji out of 64.

All strings are UTF-8; ``\\0`` is one NUL byte joining the parts:

- commitment: ``SHA-256("obrolan-sas-commit-v1" \\0 txn \\0 initiator's SAS key)``, 32 raw bytes.
- SAS info: ``"obrolan-sas-v1" \\0 txn \\0 I.user \\0 I.device \\0 I.sas_key \\0
  R.user \\0 R.device \\0 R.sas_key`` (I the initiator, R the responder, keys as
  unpadded base64). vodozemac's ``bytes(info)`` gives 7 indices into
  :data:`EMOJI` (the Matrix SAS emoji table) and 3 numbers in 1000..9191.
- MACs, once the people confirmed the codes match: HMAC keyed from the shared
  secret (vodozemac's ``calculate_mac``) over the sender's account key with info
  ``"obrolan-sas-mac-v1" \\0 txn \\0 sender user \\0 sender device \\0 "account"``,
  and over the sender device's Ed25519 key with last part ``"device"``.

A whole exchange (the messages travel inside Olm as ``verify_*`` content)::

    >>> from obrolan.crypto.sas import SasExchange
    >>> txn = "0123456789abcdef"
    >>> alice = SasExchange(txn, "alice", "PHONE", initiator=True)
    >>> bob = SasExchange(txn, "bob", "LAPTOP", initiator=False)
    >>> commitment = alice.commitment                     # verify_start
    >>> bob.accept_peer("alice", "PHONE", alice.public_key, commitment)  # after verify_key
    >>> alice.accept_peer("bob", "LAPTOP", bob.public_key)
    >>> alice.emoji() == bob.emoji() and alice.decimals() == bob.decimals()
    True
    >>> account_mac, device_mac = alice.macs("alice-account-key", "alice-device-key")
    >>> bob.verify_macs("alice-account-key", "alice-device-key", account_mac, device_mac)
"""

from __future__ import annotations

import hashlib

import vodozemac

from obrolan.errors import CryptoError, InvalidState, SignatureError

__all__ = ["EMOJI", "CommitmentMismatch", "SasExchange", "commitment_of"]

EMOJI: tuple[tuple[str, str], ...] = (
    ("🐶", "Dog"),
    ("🐱", "Cat"),
    ("🦁", "Lion"),
    ("🐎", "Horse"),
    ("🦄", "Unicorn"),
    ("🐷", "Pig"),
    ("🐘", "Elephant"),
    ("🐰", "Rabbit"),
    ("🐼", "Panda"),
    ("🐓", "Rooster"),
    ("🐧", "Penguin"),
    ("🐢", "Turtle"),
    ("🐟", "Fish"),
    ("🐙", "Octopus"),
    ("🦋", "Butterfly"),
    ("🌷", "Flower"),
    ("🌳", "Tree"),
    ("🌵", "Cactus"),
    ("🍄", "Mushroom"),
    ("🌏", "Globe"),
    ("🌙", "Moon"),
    ("☁\ufe0f", "Cloud"),
    ("🔥", "Fire"),
    ("🍌", "Banana"),
    ("🍎", "Apple"),
    ("🍓", "Strawberry"),
    ("🌽", "Corn"),
    ("🍕", "Pizza"),
    ("🎂", "Cake"),
    ("❤\ufe0f", "Heart"),
    ("😀", "Smiley"),
    ("🤖", "Robot"),
    ("🎩", "Hat"),
    ("👓", "Glasses"),
    ("🔧", "Spanner"),
    ("🎅", "Santa"),
    ("👍", "Thumbs Up"),
    ("☂\ufe0f", "Umbrella"),
    ("⌛", "Hourglass"),
    ("⏰", "Clock"),
    ("🎁", "Gift"),
    ("💡", "Light Bulb"),
    ("📕", "Book"),
    ("✏\ufe0f", "Pencil"),
    ("📎", "Paperclip"),
    ("✂\ufe0f", "Scissors"),
    ("🔒", "Lock"),
    ("🔑", "Key"),
    ("🔨", "Hammer"),
    ("☎\ufe0f", "Telephone"),
    ("🏁", "Flag"),
    ("🚂", "Train"),
    ("🚲", "Bicycle"),
    ("✈\ufe0f", "Aeroplane"),
    ("🚀", "Rocket"),
    ("🏆", "Trophy"),
    ("⚽", "Ball"),
    ("🎸", "Guitar"),
    ("🎺", "Trumpet"),
    ("🔔", "Bell"),
    ("⚓", "Anchor"),
    ("🎧", "Headphones"),
    ("📁", "Folder"),
    ("📌", "Pin"),
)
"""The Matrix specification's SAS emoji table: index -> (emoji, English name)."""

_COMMIT_LABEL = "obrolan-sas-commit-v1"
_SAS_LABEL = "obrolan-sas-v1"
_MAC_LABEL = "obrolan-sas-mac-v1"


class CommitmentMismatch(CryptoError):
    """Raised when the initiator's revealed SAS key is not the one it committed to."""


def _check_parts(*parts: str) -> None:
    """Refuse a NUL inside a part: it would let two different infos collide."""
    if any("\0" in part for part in parts):
        raise CryptoError("a SAS identifier contains a NUL character")


def _info(*parts: str) -> str:
    _check_parts(*parts)
    return "\0".join(parts)


def commitment_of(txn: str, public_key: str) -> bytes:
    """The 32-byte commitment to an initiator's SAS public key (base64 as sent)."""
    return hashlib.sha256(_info(_COMMIT_LABEL, txn, public_key).encode()).digest()


class SasExchange:
    """One side of one SAS verification.

    Use it in order: send :attr:`commitment` (initiator) or :attr:`public_key`,
    call :meth:`accept_peer` with the peer's key, show :meth:`emoji` or
    :meth:`decimals`, and once the person confirms, send :meth:`macs` and check
    the peer's with :meth:`verify_macs`. The object holds secrets only in memory
    and is not persisted: an interrupted exchange starts again with a new txn.
    """

    __slots__ = ("_established", "_initiator", "_own", "_peer", "_sas", "_txn")

    def __init__(self, txn: str, own_user: str, own_device: str, *, initiator: bool) -> None:
        """Start our side with a fresh SAS key pair.

        Raises:
            CryptoError: an identifier contains a NUL character.
        """
        _check_parts(txn, own_user, own_device)
        self._txn = txn
        self._initiator = initiator
        self._sas: vodozemac.Sas | None = vodozemac.Sas()
        self._own = (own_user, own_device, self._sas.public_key.to_base64())
        self._peer: tuple[str, str, str] | None = None
        self._established: vodozemac.EstablishedSas | None = None

    @property
    def public_key(self) -> str:
        """Our SAS public key, unpadded base64 (the initiator reveals it last)."""
        return self._own[2]

    @property
    def commitment(self) -> bytes:
        """The commitment to :attr:`public_key` the initiator sends in ``verify_start``."""
        if not self._initiator:
            raise InvalidState("only the initiator of a SAS exchange sends a commitment")
        return commitment_of(self._txn, self.public_key)

    def accept_peer(
        self,
        peer_user: str,
        peer_device: str,
        peer_key: str,
        peer_commitment: bytes | None = None,
    ) -> None:
        """Take the peer's SAS public key and derive the shared secret.

        The responder must pass the initiator's commitment from ``verify_start``;
        the initiator passes none (the responder commits to nothing). Only
        misuse (``InvalidState``) leaves the exchange usable; after any other
        error it is spent: cancel it and start again with a new txn.

        Raises:
            CommitmentMismatch: the key is not the one the initiator committed to.
            CryptoError: the key is malformed or unusable (e.g. a low-order point),
                or an identifier contains a NUL character.
            InvalidState: called twice, or the commitment is missing or unexpected.
        """
        sas = self._sas
        if sas is None:
            raise InvalidState("this SAS exchange already took a peer key; start a new one")
        if self._initiator and peer_commitment is not None:
            raise InvalidState("the initiator does not receive a commitment")
        if not self._initiator and peer_commitment is None:
            raise InvalidState("the responder needs the initiator's commitment")
        # From here on the exchange is spent whatever happens: vodozemac consumes
        # the SAS secret even when the key is refused, and a bad key means cancel.
        self._sas = None
        _check_parts(peer_user, peer_device, peer_key)
        if peer_commitment is not None and commitment_of(self._txn, peer_key) != peer_commitment:
            raise CommitmentMismatch("the peer's SAS key does not match its commitment")
        try:
            key = vodozemac.Curve25519PublicKey.from_base64(peer_key)
            established = sas.diffie_hellman(key)
        except ValueError as exc:
            raise CryptoError(f"unusable SAS public key: {exc}") from None
        self._established = established
        self._peer = (peer_user, peer_device, key.to_base64())

    def _require(self) -> tuple[vodozemac.EstablishedSas, tuple[str, str, str]]:
        if self._established is None or self._peer is None:
            raise InvalidState("accept the peer's SAS key first")
        return self._established, self._peer

    def _sas_bytes(self) -> vodozemac.SasBytes:
        established, peer = self._require()
        initiator, responder = (self._own, peer) if self._initiator else (peer, self._own)
        return established.bytes(_info(_SAS_LABEL, self._txn, *initiator, *responder))

    def emoji(self) -> list[tuple[str, str]]:
        """The 7 (emoji, name) pairs both people compare."""
        return [EMOJI[index] for index in self._sas_bytes().emoji_indices]

    def decimals(self) -> tuple[int, int, int]:
        """The 3 numbers (each 1000..9191) to compare where emoji do not show."""
        first, second, third = self._sas_bytes().decimals
        return first, second, third

    def _mac_info(self, user: str, device: str, which: str) -> str:
        return _info(_MAC_LABEL, self._txn, user, device, which)

    def macs(self, account_key: str, device_key: str) -> tuple[str, str]:
        """Our MACs over our account key and our device's Ed25519 key (``verify_mac``)."""
        established, _ = self._require()
        user, device, _ = self._own
        return (
            established.calculate_mac(account_key, self._mac_info(user, device, "account")),
            established.calculate_mac(device_key, self._mac_info(user, device, "device")),
        )

    def verify_macs(
        self, peer_account_key: str, peer_device_key: str, account_mac: str, device_mac: str
    ) -> None:
        """Check the peer's MACs against the account and device keys we expect it to have.

        Raises:
            SignatureError: a MAC does not match (another key, or a man in the middle).
        """
        established, (user, device, _) = self._require()
        checks = (
            (peer_account_key, "account", account_mac),
            (peer_device_key, "device", device_mac),
        )
        for key, which, tag in checks:
            try:
                established.verify_mac(key, self._mac_info(user, device, which), tag)
            except ValueError:
                raise SignatureError(f"the peer's {which} key MAC does not match") from None
