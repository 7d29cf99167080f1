"""Text from people and from PVE (server and guest names, PVE's error messages, e-mail addresses,
operation messages) shown on a page exactly as it is, never read as Markdown.

st.markdown, st.caption, st.info/error/warning/success, st.toast, st.subheader and widget labels
all render Markdown (plus Streamlit's `:color[…]`, `:material/…:` and `$…$`): a server named
`[x](http://evil)` would become a link, `**` bold, `$` math. `plain()` backslash-escapes every ASCII
punctuation character (CommonMark lets any of them be escaped, and escaped characters start no
link, emphasis, directive, autolink or math) and turns line breaks into spaces, so the text stays
one line of literal characters. Inside HTML (unsafe_allow_html) use html.escape instead — Markdown
is not parsed there. Dataframe cells and st.text show text literally already.
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")


def plain(value) -> str:
    """Any value (a string, an exception, None) → Markdown that shows exactly its text."""
    text = "" if value is None else str(value)
    return _PUNCTUATION.sub(r"\\\1", _LINE_BREAKS.sub(" ", text))
