"""Helpers shared by the test suites: real server processes and a raw protocol client.

:mod:`tests.support.server` starts real ``obrolan serve`` processes;
:mod:`tests.support.raw_client` speaks raw protocol frames with real vodozemac keys.
"""
