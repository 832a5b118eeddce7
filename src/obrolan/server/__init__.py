"""The relay server: authenticates devices, holds ciphertext until it is acknowledged.

Layout (see docs/architecture.md): :mod:`~obrolan.server.relay` handles frames and
delivery without knowing the web framework or the database; ``storage/`` and
``routing/`` are small ABCs with one file per backend; :mod:`~obrolan.server.app`
is the thin aiohttp layer; :mod:`~obrolan.server.admin` answers the operator's
``obrolan admin`` commands.
"""
