"""``python -m xmppspy``."""

from xmppspy.cli import main

main()
