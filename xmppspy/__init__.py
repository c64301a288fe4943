"""xmppspy: a debugging proxy for XMPP."""

__version__ = "0.1.0"
