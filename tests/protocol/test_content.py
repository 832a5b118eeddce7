"""The end-to-end samples are real Olm messages that decrypt to the Plaintext samples.

alice's device sent bob's device a pre-key message (the ``send`` and
``deliver`` samples carry it); bob answered with a normal message. The
accounts and alice's session are pickled in tests/data/vectors.json, taken
before the messages were decrypted, so the tests decrypt them afresh.
"""

from __future__ import annotations

import json
from pathlib import Path

import vodozemac

from obrolan.protocol import content, frames

DATA = Path(__file__).resolve().parents[1] / "data"
VECTORS = json.loads((DATA / "vectors.json").read_text())
PICKLE_KEY = bytes.fromhex(VECTORS["pickle_key_hex"])


def raw(name: str) -> bytes:
    """The exact bytes of one golden sample."""
    return (DATA / f"{name}.json").read_bytes()


def account(name: str) -> vodozemac.Account:
    """A sample device's Olm account."""
    return vodozemac.Account.from_pickle(VECTORS["accounts"][name], PICKLE_KEY)


def olm_message(ciphertext: content.OlmCiphertext) -> vodozemac.AnyOlmMessage:
    """The vodozemac form of a wire Olm message."""
    return vodozemac.AnyOlmMessage.from_parts(ciphertext.message_type, ciphertext.body)


def test_envelope_ciphertext_is_olm_ciphertext_json() -> None:
    """``send`` and ``deliver`` carry the olm_ciphertext sample's exact bytes as ciphertext."""
    send = frames.decode_client_frame(raw("send"))
    deliver = frames.decode_server_frame(raw("deliver"))
    assert isinstance(send, frames.Send) and isinstance(deliver, frames.Deliver)
    assert send.envelopes[0].ciphertext == raw("olm_ciphertext")
    assert deliver.envelopes[0].ciphertext == raw("olm_ciphertext")


def test_envelope_id_is_kept_from_send_to_ack() -> None:
    """The sender's envelope id comes back in ``sent``, ``deliver`` and the recipient's ``ack``."""
    send = frames.decode_client_frame(raw("send"))
    sent = frames.decode_server_frame(raw("sent"))
    deliver = frames.decode_server_frame(raw("deliver"))
    ack = frames.decode_client_frame(raw("ack"))
    assert isinstance(send, frames.Send) and isinstance(sent, frames.Sent)
    assert isinstance(deliver, frames.Deliver) and isinstance(ack, frames.Ack)
    envelope_id = send.envelopes[0].envelope_id
    assert sent.envelope_ids == [envelope_id]
    assert [e.envelope_id for e in deliver.envelopes] == [envelope_id]
    assert ack.envelope_ids == [envelope_id]
    assert len(envelope_id) == 22  # 16 random bytes, base64url without padding


def test_pre_key_message_decrypts_to_plaintext_sample() -> None:
    """bob's account makes an inbound session from the pre-key message and reads the Plaintext."""
    sealed = content.decode_olm_ciphertext(raw("olm_ciphertext"))
    assert sealed.message_type == content.OLM_PRE_KEY
    assert sealed.sender_key == account("alice").curve25519_key.to_base64()
    pre_key = olm_message(sealed).to_pre_key()
    assert pre_key is not None
    sender = vodozemac.Curve25519PublicKey.from_base64(sealed.sender_key)
    _, plaintext = account("bob").create_inbound_session(sender, pre_key)
    assert plaintext == raw("plaintext")


def test_reply_is_normal_message_on_the_same_session() -> None:
    """bob's reply is a type-1 message that alice's outbound session decrypts."""
    sealed = content.decode_olm_ciphertext(raw("olm_ciphertext_reply"))
    register = frames.decode_client_frame(raw("register"))
    assert isinstance(register, frames.Register)
    assert sealed.message_type == content.OLM_NORMAL
    assert sealed.sender_key == register.device.curve25519
    session = vodozemac.Session.from_pickle(VECTORS["alice_session"], PICKLE_KEY)
    assert session.decrypt(olm_message(sealed)) == raw("plaintext_reply")


def test_plaintext_names_the_envelope_ends() -> None:
    """The Plaintext's sender matches the envelope's sender and its recipient the receiving device."""
    deliver = frames.decode_server_frame(raw("deliver"))
    welcome = frames.decode_server_frame(raw("welcome"))
    assert isinstance(deliver, frames.Deliver) and isinstance(welcome, frames.Welcome)
    envelope = deliver.envelopes[0]
    plain = content.decode_plaintext(raw("plaintext"))
    assert (plain.sender, plain.sender_device) == (envelope.from_user, envelope.from_device)
    assert (plain.recipient, plain.recipient_device) == (welcome.username, welcome.device_id)


def test_claimed_key_is_one_bob_registered() -> None:
    """The one-time key alice claimed is one of those bob uploaded, with the same signature."""
    register = frames.decode_client_frame(raw("register"))
    claimed = frames.decode_server_frame(raw("claimed_keys"))
    fallback = frames.decode_server_frame(raw("claimed_keys_fallback"))
    assert isinstance(register, frames.Register)
    assert isinstance(claimed, frames.ClaimedKeys) and isinstance(fallback, frames.ClaimedKeys)
    assert claimed.devices[0].one_time_key in register.one_time_keys
    assert claimed.devices[0].fallback is False
    assert fallback.devices[0].one_time_key == register.fallback_key
    assert fallback.devices[0].fallback is True
    assert claimed.devices[0].device == register.device
