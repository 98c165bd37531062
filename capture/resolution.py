"""Identity resolution for one ingest batch, decided in memory before anything is written.

Each message carries identity keys (anonymous id, user id, email, phone). Keys already known
map to contacts; a message whose keys span several contacts links them. Anonymous contacts
fold into the known one; two known contacts never merge automatically (only through the
merge API), and a user id never attaches to a contact that already has a different one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

IdentityKey = tuple[str, str]  # (kind, value)
STRONG_KINDS = ("user_id", "email", "phone")
PRECEDENCE = {"user_id": 0, "email": 1, "phone": 2, "anonymous": 3}


@dataclass
class KnownContact:
    id: uuid.UUID
    is_known: bool
    user_ids: set[str] = field(default_factory=set)


@dataclass
class Resolution:
    """What the batch decided: contacts to create, keys to attach, anonymous ones to fold."""

    new_contacts: set[uuid.UUID] = field(default_factory=set)
    new_keys: dict[IdentityKey, uuid.UUID] = field(default_factory=dict)
    merges: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)  # loser -> winner
    became_known: set[uuid.UUID] = field(default_factory=set)


class Resolver:
    def __init__(
        self,
        key_owner: dict[IdentityKey, uuid.UUID],
        contacts: dict[uuid.UUID, KnownContact],
        ids: Iterator[uuid.UUID],
    ) -> None:
        self.key_owner = dict(key_owner)
        self.contacts = contacts
        self.ids = ids
        self.result = Resolution()

    def _final(self, contact_id: uuid.UUID) -> uuid.UUID:
        while contact_id in self.result.merges:
            contact_id = self.result.merges[contact_id]
        return contact_id

    def resolve(self, keys: list[IdentityKey]) -> uuid.UUID:
        """Returns the contact for a message with these keys, updating the batch's plan."""
        if len(keys) == 1 and keys[0][0] == "anonymous":
            # Most messages: an anonymous visitor, found or new; nothing to link or merge.
            owner = self._owner(keys[0])
            if owner is not None:
                return owner
            target = self._create(is_known=False)
            self._attach(keys[0], target)
            return target
        owners = {self._final(self.key_owner[k]) for k in keys if k in self.key_owner}
        known = sorted(
            (c for c in owners if self.contacts[c].is_known),
            key=lambda c: min((PRECEDENCE[k[0]] for k in keys if self._owner(k) == c), default=9),
        )
        user_id = next((value for kind, value in keys if kind == "user_id"), None)
        if known:
            target = known[0]
            if user_id is not None and self._conflicting_user(target, user_id):
                target = self._create(is_known=True)
        elif owners:
            target = min(owners, key=lambda c: (c not in self.result.new_contacts, str(c)))
        else:
            target = self._create(is_known=any(kind in STRONG_KINDS for kind, _ in keys))

        for other in owners - {target}:
            if not self.contacts[other].is_known:
                self.result.merges[other] = target
        for key in keys:
            owner = self._owner(key)
            if owner is None:
                self._attach(key, target)
        return target

    def _owner(self, key: IdentityKey) -> uuid.UUID | None:
        owner = self.key_owner.get(key)
        return None if owner is None else self._final(owner)

    def _conflicting_user(self, contact_id: uuid.UUID, user_id: str) -> bool:
        existing = self.contacts[contact_id].user_ids
        return bool(existing) and user_id not in existing

    def _create(self, is_known: bool) -> uuid.UUID:
        contact_id = next(self.ids)
        self.contacts[contact_id] = KnownContact(contact_id, is_known)
        self.result.new_contacts.add(contact_id)
        return contact_id

    def _attach(self, key: IdentityKey, contact_id: uuid.UUID) -> None:
        self.key_owner[key] = contact_id
        self.result.new_keys[key] = contact_id
        contact = self.contacts[contact_id]
        if key[0] == "user_id":
            contact.user_ids.add(key[1])
        if key[0] in STRONG_KINDS and not contact.is_known:
            contact.is_known = True
            self.result.became_known.add(contact_id)

    def final_contact(self, contact_id: uuid.UUID) -> uuid.UUID:
        return self._final(contact_id)
