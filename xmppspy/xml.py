"""lxml with every door shut: no DTD, no entity expansion, no network, no file access.

The stream parser has already rejected DTDs, entities, comments and processing instructions at
the byte level before anything reaches lxml; this parser is the second lock on the same door.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from lxml import etree

_CONTEXT_TAG = b"xmppspy-context"

_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_blank_text=False,
)


def context_tag(declarations: dict[str | None, str]) -> bytes:
    """An open tag declaring the stream header's namespaces, to parse a stanza inside it."""
    attrs = "".join(
        f" xmlns={quoteattr(uri)}" if prefix is None else f" xmlns:{prefix}={quoteattr(uri)}"
        for prefix, uri in declarations.items()
    )
    return b"<" + _CONTEXT_TAG + attrs.encode() + b">"


def parse_stanza(context: bytes, raw: bytes) -> etree._Element:
    """Parse one top-level element's bytes in the namespace context of its stream header.

    Raises ``ValueError`` when the bytes are not one well-formed element in that context.
    """
    opening = context or b"<" + _CONTEXT_TAG + b">"
    try:
        root = etree.fromstring(opening + raw + b"</" + _CONTEXT_TAG + b">", _PARSER)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"not a well-formed element: {exc}") from exc
    if len(root) != 1:
        raise ValueError(f"expected one element, found {len(root)}")
    return root[0]
