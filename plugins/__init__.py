"""Plugins that ship with sockvisor: separate processes that talk to a running
sockvisor over its control and events endpoints, never code loaded into it."""
