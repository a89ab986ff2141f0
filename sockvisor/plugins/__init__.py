"""Plugins that ship with sockvisor: separate processes that talk to a running
sockvisor over its control and events endpoints, never code loaded into it.

They are part of the installed package (`python -m sockvisor.plugins.NAME`), so
they work wherever sockvisor is installed, not only from a checkout.
"""
