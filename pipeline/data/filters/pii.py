"""The PII filter: e-mail addresses, IP addresses and phone numbers replaced by placeholders.

E-mail and IPv4 use datatrove's rules (`datatrove.pipeline.formatters.pii`: its regexes, taken from
a PIIFormatter, and its `public_ip_validator`), so the redaction matches FineWeb's. The IPv4 regex
is wrapped in boundaries datatrove lacks, so that it does not redact the middle of a longer dotted
number ("1123.45.67.890", "v1.2.3.4.5"). datatrove has no IPv6 or phone rule; ours are conservative,
because a false positive rewrites text (code, versions, dates, tables) while a miss only keeps text:
- IPv6: a colon-separated hex candidate that `ipaddress` parses, outside the IETF's reserved space
  (unassigned, so no host's address, but where slices and C++ names parse: `x[1::2]`, `add::dec`;
  Python's `is_global` counts it as global). With `only_public_ips`: global and not multicast.
- phone: international forms with a leading `+` and separated groups (or `+` and 8-15 digits), and
  the North American (555) 555-5555, 555-555-5555, 555.555.5555 (one separator kind), optionally
  after "1-". Plain digit runs, versions, dates, times and thousands groups are not phone numbers.
Each rule's regex runs only on texts where a quick pre-check finds what every match contains ('@'
and a domain, two colons, a dotted quad, '+' and digits or a 4-digit group), and every match equal
to a placeholder is left alone, so redacting twice changes and counts nothing.
Drops nothing; counts `email`, `ip`, `phone` (replacements) and `docs_redacted` (those not zero).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable

from datatrove.pipeline.formatters.pii import PIIFormatter, public_ip_validator

from .base import DocFilter, Verdict

_DATATROVE = PIIFormatter()
EMAIL_RE: re.Pattern = _DATATROVE.emails_replacer.regex
# Not inside a longer word or dotted number; a sentence's final dot may follow.
IPV4_RE = re.compile(r"(?<![\w.])(?:" + _DATATROVE.ip_replacer.regex.pattern + r")(?!\w|\.\d)")
# A hex group, then 2 to 7 more after colons (empty groups: "::"); an IPv4 tail ("2002::1.2.3.4").
# `ipaddress` decides what is an address; the boundaries keep out times ("12:30:45" does not parse)
# and C++ names ("std::vector": the group must not follow a word character).
IPV6_RE = re.compile(
    r"(?<![\w:.])[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}(?![\w:]|\.\d)",
)
# +CC then separated groups (a group may be "(0)" or "(20)" glued to the next), or +CC and the
# subscriber number without separators (E.164 as written in links and forms).
_INTL = r"\+(?:\d{8,15}|\d{1,3}(?:[ .-]?\(\d{1,4}\)[ .-]?\d{1,8}|[ .-]\d{1,8}){1,6})"
# North American: (555) 555-5555, 555-555-5555, 555.555.5555, optionally after "1-" / "1 ".
_NANP = r"(?:1[ .-])?(?:\(\d{3}\) ?\d{3}[.-]|\d{3}([.-])\d{3}\1)\d{4}"
PHONE_RE = re.compile(rf"(?<![\w.+-])(?:{_INTL}|{_NANP})(?!\w|[.-]\d)")

_SEPARATORS = re.compile(r"[ .()-]+")

# Quick pre-checks: a text is scanned with a rule's full regex only when one of its hints occurs.
# Each is a necessary condition of a match that starts with a literal or a character class, which
# `re` scans for fast (50-3000 MB/s), where the full regexes (lookbehind first) try every position.
EMAIL_HINTS = (re.compile(r"@(?:\[|[A-Za-z0-9][A-Za-z0-9-]*\.[A-Za-z0-9])"),)  # '@' then a domain
IPV6_HINTS = (re.compile(r":[0-9A-Fa-f]{0,4}:"),)
IPV4_HINTS = (re.compile(r"\.\d{1,3}\.\d{1,3}\.\d"),)
PHONE_HINTS = (
    re.compile(r"\+\d{1,3}[ .-]?\(?\d|\+\d{8}"),  # +CC and a group
    re.compile(r"[.-]\d{4}(?!\d)(?<=\d{3}[.-]\d{4})"),  # NANP's end, "555-5555" (not a float's "0.0001")
)


def _valid_ipv6(candidate: str, public_only: bool) -> bool:
    if not public_ip_validator(candidate, public_only):
        return False
    # Reserved (unassigned) space holds no host, but is where C++ names and slices parse to; Python's
    # `is_global` counts it as global, and site-local (deprecated private) too. Multicast groups are
    # not anyone's address.
    address = ipaddress.ip_address(candidate)
    if address.is_reserved:
        return False
    return not (public_only and (address.is_multicast or address.is_site_local))


def _phone(candidate: str) -> bool:
    if not candidate.startswith("+"):
        return True  # North American: the pattern fixes its 10 or 11 digits
    groups = [g for g in _SEPARATORS.split(candidate[1:]) if g]
    # "+1 000 000 000" is a signed number in thousands groups, not a phone number.
    if len(groups) > 1 and all(len(g) == 3 for g in groups[1:]):
        return False
    return 8 <= sum(len(g) for g in groups) <= 15  # E.164: at most 15 digits


class _Rule:
    """One kind of PII: a pattern, an optional validator of its matches and the placeholder."""

    def __init__(
        self,
        kind: str,
        pattern: re.Pattern,
        placeholder: str,
        hints: tuple[re.Pattern, ...],
        valid: Callable[[str], bool] | None = None,
    ) -> None:
        self.kind, self.pattern, self.placeholder, self.hints, self.valid = kind, pattern, placeholder, hints, valid

    def applies(self, text: str) -> bool:
        return any(hint.search(text) for hint in self.hints)

    def redact(self, text: str) -> tuple[str, int]:
        replaced = 0

        def replace(match: re.Match) -> str:
            nonlocal replaced
            found = match.group(0)
            if found == self.placeholder or (self.valid is not None and not self.valid(found)):
                return found
            replaced += 1
            return self.placeholder

        return self.pattern.sub(replace, text), replaced


class PIIDocFilter(DocFilter):
    def __init__(self, spec, data) -> None:
        super().__init__(spec, data)
        self.rules = self._rules(spec)

    @staticmethod
    def _rules(spec) -> list[_Rule]:
        public = spec.only_public_ips
        rules = []
        # E-mail first: its domain may be an address literal (user@[1.2.3.4]).
        if spec.emails:
            rules.append(_Rule("email", EMAIL_RE, spec.email_placeholder, EMAIL_HINTS))
        if spec.ip_addresses:
            # IPv6 before IPv4: one with an IPv4 tail ("2002::8.8.8.8") is one address.
            rules.append(_Rule("ip", IPV6_RE, spec.ip_placeholder, IPV6_HINTS, lambda s: _valid_ipv6(s, public)))
            rules.append(
                _Rule("ip", IPV4_RE, spec.ip_placeholder, IPV4_HINTS, lambda s: public_ip_validator(s, public))
            )
        if spec.phone_numbers:
            rules.append(_Rule("phone", PHONE_RE, spec.phone_placeholder, PHONE_HINTS, _phone))
        return rules

    def redact(self, text: str) -> tuple[str, Counter]:
        counts: Counter = Counter()
        for rule in self.rules:
            if rule.applies(text):
                text, n = rule.redact(text)
                counts[rule.kind] += n
        return text, counts

    def __call__(self, texts: list[str]) -> Verdict:
        out, counts = [], Counter()
        for text in texts:
            redacted, found = self.redact(text)
            out.append(redacted)
            counts.update(found)
            counts["docs_redacted"] += redacted != text
        changed = counts["docs_redacted"] > 0
        # Only what happened: a kind never found adds no zero counter to the run's stats.
        return Verdict.keep_all(len(texts), texts=out if changed else None, counts=dict(+counts))
