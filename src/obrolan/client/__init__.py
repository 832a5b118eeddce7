"""obrolan's async client: connection, durable outbox, inbox, local encrypted store.

::

    from obrolan.client import Client

    async with Client.open(profile_dir, passphrase) as client:
        await client.send("bob", "hi")
        async for message in client.messages():
            print(message.sender, message.text)
"""

from obrolan.client.client import Client
from obrolan.client.models import Contact, Message, MessageState, Whoami

__all__ = ["Client", "Contact", "Message", "MessageState", "Whoami"]
